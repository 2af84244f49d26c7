# mmsegmentation's MAE recipe (48.13 mIoU with the 1600-epoch MAE ViT-B): 160k steps at batch 16, lr 1e-4,
# relative position bias tables (zero init) and layer scale (init 1.0) added to the backbone, sliding-window
# stride 341 (mmseg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py).
_base_ = ["_base_/seg_runtime.py"]
model = dict(rel_pos_bias=True, layer_scale_init=1.0, slide_stride=341)
optim = dict(lr=1e-4)
schedule = dict(iterations=160_000, val_interval=16_000)
checkpoint = dict(interval=16_000)
