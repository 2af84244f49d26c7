# The position probe on a tiny encoder and the synthetic scenes, CPU, about a minute.
_base_ = ["posprobe_vit_base.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(img_size=64)
effective_batch = 64
batch_size = 64
optim = dict(base_lr=1.6e-2)  # peak 4e-3
schedule = dict(epochs=10)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
