# DINOv2's "linear" semantic segmentation on ADE20K (Oquab et al. 2023, Sec. 7.4 and Tab. 10, setting "lin."): the
# ViT is frozen, a BatchNorm + 1x1 conv on its last block's patch tokens (after the final norm, [CLS] / registers
# dropped) predicts a map at stride = patch size, upsampled bilinearly to the labels. Values from DINOv2's public eval
# config dinov2_vitb14_ade20k_linear_config.py (https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/, linked from
# facebookresearch/dinov2's README; mmseg 0.x): 512 x 512 crops, AdamW lr 1e-3, weight decay 1e-4, betas
# (0.9, 0.999), no clipping, linear warmup 1500 steps from 1e-6 x lr, then poly (power 1) to 0, 40k steps at batch
# 16 (2 per GPU x 8), SyncBN, head on block 11 of 12 (out_indices [8, 9, 10, 11], in_index [3]), no dropout,
# sliding-window test with 512 windows and stride 341, evaluation every 10k steps. Where we differ, it says so below.
#   droppos-bench seg linear linear_vit_base_ade ckpt=encoder.safetensors data.root=/data/ADEChallengeData2016
# Data (seg_runtime) is DINOv2's pipeline too: resize to (2048, 512) x ratio 0.5-2.0, 512 crops with cat_max_ratio
# 0.75, flip, photometric distortion; test images resized to (2048, 512), scored at full label size.
_base_ = ["_base_/seg_runtime.py"]
model = dict(
    _delete_=True,
    size="base",  # model.size=large for ViT-L (patch size, registers, pre-norm come from the checkpoint)
    # Blocks whose patch tokens feed the head, each after the final norm and concatenated: (-1,) is DINOv2's "lin.";
    # (-4, -3, -2, -1) (model.layers="(-4,-3,-2,-1)" on the command line, or in a config inheriting this one) gives
    # the 4-layer features of its "+ms" setting, whose 640 px crops and multi-scale test are not implemented here
    layers=(-1,),
    final_norm="auto",  # the ViT's final LayerNorm on the tokens: "auto" uses the checkpoint's if it has one
    # BEiT-style relative position tables / layer scales: on when the checkpoint has them
    rel_pos_bias="auto",
    layer_scale_init="auto",
    slide_stride=341,  # test-time sliding-window stride (windows of data.crop_size), DINOv2's
    norm="SyncBN",  # the head's BatchNorm; plain BatchNorm in a single process or on CPUs
)
# Images per optimizer step over all GPUs and accumulation steps; per-GPU batch below.
effective_batch = 16
batch_size = 2  # 16 = 2 x 8 GPUs, as DINOv2
optim = dict(
    _delete_=True,
    lr=1e-3,  # the head's only; the frozen ViT is not in the optimizer
    # DINOv2 (mmseg 0.x without paramwise_cfg) decays every head parameter, BN and bias included: so do we
    weight_decay=1e-4,
    betas=(0.9, 0.999),
    clip_grad=None,
)
schedule = dict(
    _delete_=True,
    iterations=40_000,  # optimizer steps
    warmup_iters=1500,  # linear warmup from warmup_factor x lr
    warmup_factor=1e-6,
    poly_power=1.0,  # then lr x (1 - progress) ** power down to 0
    val_interval=10_000,  # evaluate (sliding window over the whole val split) every this many steps
)
# DINOv2 trains in fp32 (fp16 = None); bf16 autocast here (the frozen forward and the head) for speed, as every
# seg config; precision="fp32" for theirs
precision = "bf16"
checkpoint = dict(interval=10_000, max_keep=2)
# Patch 14 (DINOv2): 512 px windows are center-padded with zeros to 518 (37 x 37 tokens) before the ViT and the
# logits resized back to 512, as DINOv2's CenterPadding pre-hook does; DINOv2's backbone gets its own pos embed
# interpolated per input, ours is resampled once to the padded grid when the checkpoint loads.
# A released head instead of training one (DINOv2's dinov2_vitb14_ade20k_linear_head.pth: an mmseg checkpoint of its
# BNHead, bn.* and conv_seg.* under decode_head.): it scores val with the frozen ViT of ckpt, nothing is trained
head = None
