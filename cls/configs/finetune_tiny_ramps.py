# Fine-tune a tiny ViT to tell the direction of colour ramps (4 classes, benchmarks/synthetic/ramps.py), from
# droppos_tiny_ramps's encoder or from random init: 16 labelled images per class, 80 steps, under a minute on a CPU.
# No flips, crops, RandAugment or erasing: a flip changes the label.
_base_ = ["finetune_tiny_synth.py"]
data = dict(root="data/ramp_directions")
model = dict(img_size=64, depth=2)
aug = dict(crop_scale=(1.0, 1.0), hflip=0.0, auto_augment=None, reprob=0.0)
effective_batch = 32
batch_size = 32
optim = dict(base_lr=8e-3)  # peak lr 1e-3, 2 steps per epoch
schedule = dict(epochs=40, warmup_epochs=0)
log_interval = 50
