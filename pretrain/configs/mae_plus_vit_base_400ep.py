# MAE+ ViT-B/16, 400 epochs (AdPE paper's baseline: 83.9 fine-tuned at 224 after 1600 epochs), the authors' public
# command: 4 crops of 112 px per image, encoder on every patch (masked ones as a mask token), MAE's decoder.
_base_ = ["_base_/pretrain_runtime.py"]
model = dict(
    arch="mae_plus",
    size="base",
    img_size=112,  # crop size: a 7x7 grid; fine-tuning at 224 resamples the position embedding
    patch_size=16,
    mask_ratio=0.75,  # per crop: 37 of 49 patches masked
    decoder_dim=512,
    decoder_depth=8,
    decoder_heads=16,
    norm_pix_loss=True,  # targets normalised per patch
)
data = dict(
    crops=4,  # random-resized crops per image, each masked independently; the model sees 4x the images
    crop_scale=(0.08, 1.0),  # RandomResizedCrop scale of each crop (MAE uses 0.2-1)
)
# effective_batch counts images, not crops (4096 images = 16384 crops per optimizer step), and the lr scales with it:
# peak lr = base_lr x 4096 / 256 = 2.4e-3, as the authors compute it. 4096 = 128 images (512 crops) x 8 GPUs x 4
# accumulation steps, their setting.
effective_batch = 4096
batch_size = 128
schedule = dict(epochs=400, warmup_epochs=20)  # the authors' 400-epoch warmup
