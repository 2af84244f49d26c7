# The paper's ADE20K recipe with ViT-L (24 blocks, width 1024): neck inputs from blocks 7, 11, 15 and 23.
# The paper states no ViT-L segmentation settings, so drop path and lr are ViT-B's. Layer decay is not: ViT-B's
# 0.65 over 24 blocks would scale block 0's lr by 0.65 ** 24 (3e-5, frozen in effect). 0.9 follows the BEiT
# practice shipped with mmseg (beit-base_upernet: 0.9 over 12 layers; beit-large_upernet: 0.95 over 24), putting
# block 0 at 0.9 ** 24 = 0.08.
_base_ = ["_base_/seg_runtime.py"]
model = dict(size="large", out_indices=(7, 11, 15, 23), head_channels=1024)
optim = dict(layer_decay=0.9)
