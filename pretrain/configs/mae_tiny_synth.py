# A tiny MAE on the synthetic scenes, on a CPU in minutes (the MAE counterpart of droppos_tiny_synth).
_base_ = ["mae_vit_base_200ep.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(size="tiny", img_size=96, depth=4, decoder_dim=128, decoder_depth=2, decoder_heads=4)
effective_batch = 64
batch_size = 64
optim = dict(base_lr=4e-3)
schedule = dict(epochs=20, warmup_epochs=1)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
