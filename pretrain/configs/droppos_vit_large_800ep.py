# DropPos ViT-L/16, 800 epochs, 40 warmup epochs (paper Tab. 5: 85.8 fine-tuned).
_base_ = ["_base_/pretrain_runtime.py", "_base_/droppos_vit_base.py"]
model = dict(size="large")
batch_size = 128  # 4096 = 128 x 8 GPUs x 4 accumulation steps
schedule = dict(epochs=800, warmup_epochs=40)
# The authors' release clips each parameter's gradient to norm 5 (its default --clip_grad, which its scripts keep).
optim = dict(clip_grad=5.0, clip_mode="per_param")
