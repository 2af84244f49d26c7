# Settings shared by every pre-training recipe (paper, supplementary A). Override any key on the command line:
#   droppos-bench pretrain droppos_vit_base_200ep data.root=/data/imagenet batch_size=256
data = dict(
    root="data/imagenet",  # ImageNet layout: root/train/<class>/*.JPEG
    crop_scale=(0.2, 1.0),  # RandomResizedCrop scale; flip; nothing else
    hflip=0.5,  # probability of a horizontal flip
    num_workers=10,  # data-loader processes per GPU
    skip_invalid=False,  # an image PIL cannot decode stops the run with its name; True skips (and counts) it
)
# Images per optimizer step over all GPUs and accumulation steps; it sets the lr and is the same at any scale.
effective_batch = 4096
# Images per GPU per forward; gradient accumulation = effective_batch / (batch_size x GPUs), which must be whole
# (4096 = 256 x 8 GPUs x 2 steps, or 128 x 32 GPUs x 1).
batch_size = 256
optim = dict(
    base_lr=1.5e-4,  # peak lr = base_lr x effective_batch / 256
    weight_decay=0.05,  # on weights with 2+ dims (biases and norms excluded), as MAE and DropPos
    betas=(0.9, 0.95),
    clip_grad=None,  # max gradient norm, or None (the paper says nothing of clipping)
    clip_mode="global",  # one norm over all gradients; "per_param": each parameter's own (the DropPos release)
)
schedule = dict(
    epochs=200,
    warmup_epochs=10,  # linear warmup, then cosine to min_lr; or set warmup_iters (optimizer steps) instead
    warmup_iters=None,
    min_lr=0.0,
)
require_gpu = True  # stop at start when torch sees no GPU (a recipe sized for GPUs); False runs on the CPU
precision = "bf16"  # autocast (no loss scaler needed); "fp32" to turn it off
compile = False  # torch.compile the model
log_interval = 50  # optimizer steps between log lines / TensorBoard points
checkpoint = dict(interval=1, max_keep=2)  # every epoch, keep the last 2 (plus last_checkpoint)
seed = 0
work_dir = None  # default: work_dirs/<config name>
resume = False  # True: continue from the last checkpoint in work_dir; or the path of a checkpoint
