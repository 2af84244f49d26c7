# UperNet on ADE20K (paper Sec. 4 and Tab. 1-4, 6: 512 x 512, 80k iterations, mmsegmentation). Override any key
# on the command line:
#   droppos-bench seg train upernet_vit_base_80k ckpt=encoder.safetensors data.root=/data/ADEChallengeData2016
ckpt = None  # pre-trained encoder (any supported format); None trains the backbone from random init
ckpt_format = "auto"  # its release format (`droppos-bench convert --help` lists them); "auto": detected from its keys
allow_pickle = False  # allow checkpoints that need arbitrary Python objects (only files you trust)
data = dict(
    root="data/ade/ADEChallengeData2016",  # images/{training,validation}/*.jpg, annotations/.../*.png
    classes=None,  # None: ADE20K's 150 classes; or a list of names for label values 1..N (0 = unlabelled)
    reduce_zero_label=True,  # label 0 is "unlabelled" (ignored), label v is class v - 1
    crop_size=512,  # training crops, the backbone's input size and the sliding window at test time
    scale=(2048, 512),  # resize target (long, short side) before ratio jitter; test images are resized to it
    ratio_range=(0.5, 2.0),  # random rescale of `scale` in training
    cat_max_ratio=0.75,  # re-draw a crop (up to 10 times) in which one class covers more than this
    num_workers=4,  # data-loader processes per GPU
    # True: in training an unreadable image or label png is replaced by the next readable sample (each logged, the
    # count logged every log_interval steps); False: it stops the run naming the file. Evaluation never skips.
    skip_invalid=False,
)
model = dict(
    size="base",
    out_indices=(3, 5, 7, 11),  # blocks whose outputs feed the 4-scale neck
    drop_path_rate=0.1,
    pos_embed_trainable=True,  # the resampled pos embed is trained, as in mmseg's MAE backbone
    # BEiT's relative position bias table per block (zero init) and layer scale (init value) as in mmseg's MAE
    # backbone; "auto": on when the checkpoint has them, else off
    rel_pos_bias="auto",
    layer_scale_init="auto",
    head_channels=768,  # UPerHead width
    aux_channels=256,  # auxiliary FCN head width
    aux_weight=0.4,  # auxiliary loss weight
    pool_scales=(1, 2, 3, 6),  # UPerHead pyramid pooling
    # Test-time sliding-window stride (windows of data.crop_size): 256 for the paper's 80k recipes as our task states
    # (neither the paper nor the authors' public code names one); mmseg's MAE config, which the paper follows, uses
    # 341 (upernet_vit_base_160k_mae sets it; model.slide_stride=341 does the same for an 80k run).
    slide_stride=256,
    norm="SyncBN",  # neck and heads; plain BatchNorm in a single process or on CPUs
)
# Images per optimizer step over all GPUs and accumulation steps; per-GPU batch below. The recipes state lr and
# warmup for this batch; change effective_batch only together with them.
effective_batch = 16
batch_size = 2  # 16 = 2 x 8 GPUs
optim = dict(
    lr=7e-4,  # at effective_batch (not rescaled): the paper's value for DropPos
    layer_decay=0.65,  # backbone block i gets lr x 0.65 ** (depth - i); neck and heads the full lr
    weight_decay=0.05,  # none on norms, biases, layer scales, pos embed, [CLS] and relative position tables
    betas=(0.9, 0.999),
    clip_grad=None,
)
schedule = dict(
    iterations=80_000,  # optimizer steps
    warmup_iters=1500,  # linear warmup from warmup_factor x lr
    warmup_factor=1e-6,
    poly_power=1.0,  # then lr x (1 - progress) ** power down to 0
    val_interval=8000,  # evaluate (sliding window over the whole val split) every this many steps
)
require_gpu = True  # stop at start when torch sees no GPU (a recipe sized for GPUs); False runs on the CPU
precision = "bf16"  # autocast in training and evaluation; "fp32" to turn it off
compile = False  # torch.compile the backbone
log_interval = 50
checkpoint = dict(interval=8000, max_keep=2)  # every 8000 steps, keep the last 2 (plus last and best mIoU)
seed = 0
work_dir = None  # default: work_dirs/<config name>
resume = False  # True: continue from the last checkpoint in work_dir; or a checkpoint path
