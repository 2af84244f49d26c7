# MAE ViT-B/16, 200 epochs: the paper's own MAE baseline (Tab. 5: 82.2; Tab. 6), same recipe as DropPos.
_base_ = ["_base_/pretrain_runtime.py"]
model = dict(
    arch="mae",
    size="base",
    img_size=224,
    patch_size=16,
    mask_ratio=0.75,
    decoder_dim=512,
    decoder_depth=8,
    decoder_heads=16,
    norm_pix_loss=True,  # targets normalised per patch
)
