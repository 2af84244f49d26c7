# A tiny MAE+ on the synthetic scenes, on a CPU in minutes (the MAE+ counterpart of mae_tiny_synth): 4 crops of
# 48 px (a 3x3 grid, half the 96 px the other tiny configs use, as 112 is half of 224).
_base_ = ["mae_plus_vit_base_400ep.py"]
data = dict(root="data/synth", num_workers=0)
model = dict(size="tiny", img_size=48, depth=4, decoder_dim=128, decoder_depth=2, decoder_heads=4)
effective_batch = 64  # images (256 crops)
batch_size = 64
optim = dict(base_lr=4e-3)
schedule = dict(epochs=20, warmup_epochs=1)
precision = "fp32"
log_interval = 10
require_gpu = False  # sized for a CPU
