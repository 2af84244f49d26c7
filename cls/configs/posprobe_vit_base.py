# Position-sensitivity probe (paper Tab. 7): frozen backbone, linear 196-way position head, 75% of position
# embeddings dropped. The paper gives no probe recipe; this one (AdamW, 20 epochs) is ours.
#   droppos-bench cls posprobe posprobe_vit_base ckpt=droppos_vit_base_800ep.pth data.root=/data/imagenet
_base_ = ["_base_/runtime.py"]
ckpt = None  # pre-trained or fine-tuned encoder, any supported format; the architecture is read from it
data = dict(root="data/imagenet", num_workers=10, crop_scale=(0.2, 1.0))
model = dict(img_size=224, drop_ratio=0.75)
effective_batch = 1024
batch_size = 256
optim = dict(base_lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), clip_grad=None)
schedule = dict(epochs=20, warmup_epochs=1, warmup_iters=None, min_lr=0.0)
