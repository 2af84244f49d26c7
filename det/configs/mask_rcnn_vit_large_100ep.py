# ViTDet's 100-epoch recipe with ViT-L (drop path 0.4, layer decay 0.8).
_base_ = ["mask_rcnn_vit_base_100ep.py"]
model = dict(size="large", drop_path_rate=0.4)
optim = dict(layer_decay=0.8)
