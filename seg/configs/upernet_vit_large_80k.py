# The paper's ADE20K recipe with ViT-L (24 blocks, width 1024): neck inputs from blocks 7, 11, 15 and 23.
# The paper states no ViT-L segmentation settings; drop path and layer decay are ViT-B's (set optim.layer_decay
# for 24 blocks if needed).
_base_ = ["_base_/seg_runtime.py"]
model = dict(size="large", out_indices=(7, 11, 15, 23), head_channels=1024)
