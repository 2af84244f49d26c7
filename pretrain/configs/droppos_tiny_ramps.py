# A tiny DropPos on colour-ramp images (benchmarks/synthetic/ramps.py: 64 px, a 4 x 4 patch grid, a patch's colour
# gives its position only up to a per-image origin that an anchor pins). About a minute on a CPU core (800 steps of
# 32 on 1,600 images); its position accuracy with many anchors is far above that with none. The demo and the tests
# of anchors and of pre-training's benefit use it.
_base_ = ["droppos_tiny_synth.py"]
data = dict(root="data/ramps", crop_scale=(1.0, 1.0), hflip=0.0)  # whole, unflipped images: patches stay on cells
model = dict(img_size=64, depth=2, tau=float("inf"), mask_ratio=0.875, pos_mask_ratio=0.5)  # 2 visible, 1 anchor
smoothing = dict(sigma0=0.0)
effective_batch = 32
batch_size = 32
optim = dict(base_lr=8e-3)  # peak lr 1e-3
schedule = dict(epochs=16)
checkpoint = dict(interval=16)
log_interval = 50
