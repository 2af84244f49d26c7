# A tiny linear segmentation probe on the synthetic scenes (droppos-bench data synth), CPU, seconds.
_base_ = ["linear_vit_base_ade.py"]
data = dict(
    root="data/synth/ade/ADEChallengeData2016",
    classes=("sky", "ground", "circle", "cross", "diamond", "ellipse", "ring", "square", "star", "triangle"),
    crop_size=64, scale=(512, 128), num_workers=0,
)
model = dict(size="tiny", patch_size=8, depth=4, slide_stride=32)
effective_batch = 8
batch_size = 8
schedule = dict(iterations=100, warmup_iters=10, val_interval=None)
precision = "fp32"
log_interval = 10
checkpoint = dict(interval=100, max_keep=1)
require_gpu = False  # sized for a CPU
