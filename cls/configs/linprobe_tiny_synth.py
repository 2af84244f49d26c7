# The linear probe on a tiny encoder and the synthetic scenes, CPU, about a minute.
_base_ = ["linprobe_vit_base.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(size="tiny", img_size=96, depth=4)
effective_batch = 64
batch_size = 64
optim = dict(type="sgd", base_lr=0.4)  # peak 0.1
schedule = dict(epochs=10, warmup_epochs=1)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
