# The paper's 1x recipe with ViT-L (global attention in blocks 5, 11, 17, 23; drop path 0.4 as ViTDet's ViT-L).
_base_ = ["_base_/det_runtime.py"]
model = dict(size="large", drop_path_rate=0.4)
optim = dict(layer_decay=0.8)  # ViTDet's value for 24 blocks
