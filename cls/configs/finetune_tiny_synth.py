# Fine-tune a tiny ViT (e.g. work_dirs/droppos_tiny_synth/encoder.safetensors) on the synthetic scenes, CPU, minutes.
_base_ = ["_base_/finetune_runtime.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(size="tiny", img_size=96, depth=4)
aug = dict(mixup=0.0, cutmix=0.0)  # 8 classes and a few hundred images: mixing hides the signal
effective_batch = 64
batch_size = 64
optim = dict(base_lr=4e-3)  # peak 1e-3
schedule = dict(epochs=10, warmup_epochs=1)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
