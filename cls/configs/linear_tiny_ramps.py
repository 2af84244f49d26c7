# Linear heads on a tiny ViT's frozen features of the colour-ramp direction task (benchmarks/synthetic/ramps.py), on a
# CPU in seconds: the frozen-protocol test's recipe (droppos_tiny_ramps's encoder against random init).
_base_ = ["linear_vit_base.py"]
data = dict(root="data/ramp_directions", num_workers=0)
model = dict(size="tiny", img_size=64, depth=2)
batch_size = 64
features = dict(last_layers=1)  # 2 blocks
# higher than linear_vit_base's grid: these heads get 600 steps, in which its lower rates leave them under-trained
linear = dict(base_lrs=(1.0, 3.0, 10.0, 30.0, 100.0), epochs=100, batch_size=32, holdout=0.25)
precision = "fp32"
require_gpu = False  # sized for a CPU
