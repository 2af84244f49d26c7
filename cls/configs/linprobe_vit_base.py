# Linear probing, MAE's protocol: frozen encoder, BatchNorm (no affine) + linear head on the [CLS] feature, LARS,
# 90 epochs at effective batch 16384, RandomResizedCrop + flip only.
#   droppos-bench cls linprobe linprobe_vit_base ckpt=encoder.safetensors data.root=/data/imagenet
_base_ = ["_base_/runtime.py"]
ckpt = None
data = dict(root="data/imagenet", num_workers=10, crop_scale=(0.08, 1.0))
model = dict(size="base", img_size=224, global_pool="token", drop_path_rate=0.0)
effective_batch = 16384
batch_size = 512  # 16384 = 512 x 8 GPUs x 4 accumulation steps
# LARS as MAE's: trust ratio on the weight, none on the bias; peak lr = 0.1 x 16384 / 256 = 6.4
optim = dict(type="lars", base_lr=0.1, weight_decay=0.0, clip_grad=None)
schedule = dict(epochs=90, warmup_epochs=10, warmup_iters=None, min_lr=0.0)
