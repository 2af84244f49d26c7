# A tiny DropPos that learns on the synthetic scenes on a CPU in a few minutes (`droppos-bench data synth`).
# It checks that the pipeline works; its numbers say nothing about DropPos on real images.
_base_ = ["_base_/pretrain_runtime.py", "_base_/droppos_vit_base.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(size="tiny", img_size=96, depth=4, decoder_dim=128, decoder_heads=4)
smoothing = dict(mode="paper")  # the official table assumes 224 / 16 inputs
effective_batch = 64
batch_size = 64
optim = dict(base_lr=4e-3)  # peak lr 4e-3 x 64 / 256 = 1e-3 for a tiny model on a tiny set
schedule = dict(epochs=20, warmup_epochs=1)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
