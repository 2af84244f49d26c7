# ViTDet Mask R-CNN on COCO 2017 (paper supplementary A; ViTDet's recipe). Override any key on the command line:
#   droppos-bench det train mask_rcnn_vit_base_1x ckpt=encoder.safetensors data.root=/data/coco
ckpt = None  # pre-trained encoder (any supported format); None trains the backbone from random init
ckpt_format = "auto"  # its release format (`droppos-bench convert --help` lists them); "auto": detected from its keys
allow_pickle = False  # allow checkpoints that need arbitrary Python objects (only files you trust)
data = dict(
    root="data/coco",  # annotations/instances_{train,val}2017.json, train2017/, val2017/
    scale_range=(0.1, 2.0),  # large scale jitter: resize by this factor of img_size, then crop / pad to it
    num_workers=8,  # data-loader processes per GPU
    # a missing or undecodable image, an empty box or an unknown category id stops the run with its name;
    # True leaves such items out (counted in the log): an undecodable training image is replaced by the next one,
    # evaluation scores only the images it could read
    skip_invalid=False,
    # True looks for every image file at start (one stat per image: slow for COCO on a network file system);
    # False finds a missing file when it is first read, as an error naming it or (skip_invalid) a counted skip
    check_files=False,
)
model = dict(
    size="base",
    img_size=1024,  # square input: train crops and pads to it, test resizes the longer side to it and pads
    pretrain_img_size=224,  # the trained pos embed stays on this grid (14 x 14), resized to the input's each forward
    window_size=14,  # window attention except in ViTDet's global blocks (2, 5, 8, 11 for ViT-B)
    drop_path_rate=0.1,
    layer_scale_init="auto",  # layer scales (DeiT III, BEiT) where the checkpoint has them
    # a checkpoint whose patch size the pyramid cannot take (DINOv2's 14) gets its patch embedding resampled to the
    # recipe's patch_size (16 where unset; FlexiViT's resize); False refuses such a checkpoint
    resample_patch=True,
    out_channels=256,  # feature pyramid width
    head_channels=256,  # RPN / box / mask head convolutions
    fc_channels=1024,  # box head fully connected layer
    anchor_sizes=(32, 64, 128, 256, 512),  # one per pyramid level p2-p6, aspect ratios 0.5, 1, 2
    roi_batch_size=512,  # proposals sampled per image for the box and mask losses (a quarter foreground at most)
    score_thresh=0.05,  # test time: detections below this class score are dropped (then NMS, best 100 kept)
)
# Images per optimizer step over all GPUs and accumulation steps; per-GPU batch below. Detection recipes state
# lr, steps and warmup for their batch; change effective_batch only together with them.
effective_batch = 16
batch_size = 2  # 16 = 2 x 8 GPUs
optim = dict(
    lr=3e-4,  # at effective_batch (not rescaled)
    layer_decay=0.7,  # backbone block i gets lr x 0.7 ** (depth - i); pyramid and heads the full lr
    weight_decay=0.1,  # ViTDet's: on everything but pos embed and the ViT's norms (biases, rel pos and the
    # pyramid's and heads' norms included: detectron2 spares only torch's norm modules)
    betas=(0.9, 0.999),
    clip_grad=None,
)
schedule = dict(
    iterations=88_750,  # optimizer steps (the paper's 1x: 12 epochs of COCO at batch 16)
    warmup_iters=250,  # linear warmup from warmup_factor x lr
    warmup_factor=0.001,
    steps=(78_889, 85_463),  # lr x gamma at each
    gamma=0.1,
    val_interval=None,  # evaluate every this many steps; None: at the end only
)
require_gpu = True  # stop at start when torch sees no GPU (a recipe sized for GPUs); False runs on the CPU
precision = "bf16"  # autocast in training and evaluation; "fp32" to turn it off
compile = False  # torch.compile the backbone
log_interval = 20
checkpoint = dict(interval=5000, max_keep=2)  # every 5000 steps, keep the last 2 (plus last and best box AP)
seed = 0
work_dir = None  # default: work_dirs/<config name>
resume = False  # True: continue from the last checkpoint in work_dir; or a checkpoint path
