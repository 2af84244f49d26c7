# A tiny ViTDet Mask R-CNN on the synthetic scenes (droppos-bench data synth), CPU, minutes.
_base_ = ["_base_/det_runtime.py"]
data = dict(root="data/synth", num_workers=0, scale_range=(0.5, 1.5))
model = dict(size="tiny", img_size=128, patch_size=8, depth=4, window_size=4, global_blocks=(1, 3), drop_path_rate=0.0,
             out_channels=64, head_channels=64, fc_channels=256, anchor_sizes=(8, 16, 32, 64, 128),
             roi_batch_size=64, pretrain_img_size=96)  # the tiny synthetic pre-training's input size
effective_batch = 8
batch_size = 8
optim = dict(lr=1e-3, layer_decay=0.9)
schedule = dict(iterations=300, warmup_iters=20, steps=(250,))
precision = "fp32"
log_interval = 10
checkpoint = dict(interval=100, max_keep=1)
require_gpu = False  # sized for a CPU
