# A tiny UperNet on the synthetic scenes (droppos-bench data synth), CPU, minutes.
_base_ = ["_base_/seg_runtime.py"]
data = dict(
    root="data/synth/ade/ADEChallengeData2016",
    classes=("sky", "ground", "circle", "cross", "diamond", "ellipse", "ring", "square", "star", "triangle"),
    crop_size=64, scale=(512, 128), num_workers=0,
)
model = dict(size="tiny", patch_size=8, depth=4, out_indices=(0, 1, 2, 3), drop_path_rate=0.0, head_channels=64,
             aux_channels=32, slide_stride=32)
effective_batch = 8
batch_size = 8
optim = dict(lr=1e-3, layer_decay=0.9)
schedule = dict(iterations=200, warmup_iters=20, val_interval=None)
precision = "fp32"
log_interval = 10
checkpoint = dict(interval=100, max_keep=1)
require_gpu = False  # sized for a CPU
