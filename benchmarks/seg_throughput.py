"""UperNet throughput: training iterations/s and sliding-window inference images/s, beside mmseg's published
figures for MAE ViT-B UperNet on V100s (140 ms per image at inference, 9.96 GB training memory per GPU at batch 2).

    python benchmarks/seg_throughput.py                        # cuda: ViT-B, 512 crops, batch 2, bf16
    python benchmarks/seg_throughput.py --compile --batch 2 4
    python benchmarks/seg_throughput.py --plain                # the paper's 80k recipe's model instead
    python benchmarks/seg_throughput.py --size tiny --depth 2 --img-size 128 --test-size 128 171 --steps 2  # CPU

The model is that of mmseg's figures by default: the upernet_vit_base_160k_mae config's (relative position bias
tables and layer scale in every block, sliding-window stride 341 of 512); --plain takes upernet_vit_base_80k's
(a plain ViT, stride 256), the strides scaled to --img-size. Training batches are synthetic scenes through the real
ADE20K pipeline (random resize, crop, flip, photometric distortion); a step is the Runner's (data preprocessor,
autocast forward with both heads' losses, backward, AdamW with layer decay). Inference is mmseg's sliding window
(crop --img-size) over images of --test-size, ADE20K's typical 512 x 683 by default, including the resize of
the logits to the image. On another GPU than a V100 the ratios compare hardware too.
"""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from functools import partial
from itertools import cycle
from pathlib import Path

import torch
from mmengine.dataset import pseudo_collate

from backbone import VIT_SIZES, adamw_layer_decay
from backbone.checkpoint_load import resolve_extensions
from benchmarks.synthetic import synthesize
from benchmarks.timing import best_rates, hardware, report_host_syncs, step_parser
from engine import DeviceOptimWrapper, load_config
from seg.data import build_seg_dataset
from seg.model import SegEncoderDecoder, build_mmseg_model, upernet_config
from seg.train import BACKBONE_PREFIX, CONFIGS_DIR

MMSEG_INFERENCE_IMAGES_PER_SECOND = 1 / 0.140  # MAE ViT-B UperNet, 512 x 512 recipe, one V100
MMSEG_TRAIN_MEMORY_GB = 9.96  # per V100 at batch 2
OUT_INDICES = {"large": (7, 11, 15, 23)}
RECIPES = {False: "upernet_vit_base_160k_mae", True: "upernet_vit_base_80k"}  # by --plain


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = step_parser(__doc__, default_batch=2, default_steps=10 if cuda else 2)
    parser.set_defaults(img_size=512 if cuda else 128, batch=[2])
    parser.add_argument("--test-size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"),
                        help="inference image size (default: a typical ADE20K validation image)")
    parser.add_argument("--plain", action="store_true",
                        help="the paper's 80k recipe's plain ViT and stride instead of mmseg's MAE recipe's")
    return parser.parse_args()


def recipe(plain: bool, crop: int) -> tuple[dict, int]:
    """Backbone extensions (relative position tables, layer scale) and sliding-window stride of the compared
    config, read from it so that they cannot drift; the stride keeps its ratio to the config's crop."""
    cfg = load_config(RECIPES[plain], configs_dir=CONFIGS_DIR)
    options = resolve_extensions(dict(cfg.model), None)  # "auto" without a checkpoint: off
    extensions = {key: options[key] for key in ("rel_pos_bias", "layer_scale_init")}
    return extensions, round(crop * options["slide_stride"] / cfg.data.crop_size)


def build_model(size: str, crop: int, depth: int | None, amp: bool, device: torch.device,
                plain: bool = False) -> SegEncoderDecoder:
    """UperNet of the compared recipe (see `recipe`) with the neck and heads as wide as the ViT."""
    width = VIT_SIZES[size]["embed_dim"]
    depth = depth or VIT_SIZES[size]["depth"]
    if depth == VIT_SIZES[size]["depth"]:
        indices = OUT_INDICES.get(size, (3, 5, 7, 11))
    else:  # a shortened encoder (quick CPU runs): four blocks spread up to the last
        indices = tuple(round(i * (depth - 1) / 3) for i in range(4))
    extensions, stride = recipe(plain, crop)
    backbone = dict(size=size, depth=depth, out_indices=indices, drop_path_rate=0.1, **extensions)
    config = upernet_config(150, crop, backbone, width, head_channels=width, slide_stride=stride, norm="BN",
                            bf16=amp)
    return build_mmseg_model(config).to(device)


def train_batches(root: Path, crop: int, batch: int) -> list[dict]:
    """Four batches of synthetic scenes through the ADE20K training pipeline (scaled to the crop size)."""
    data = dict(root=root / "ade" / "ADEChallengeData2016", classes=None, reduce_zero_label=True, crop_size=crop,
                scale=(4 * crop, crop), ratio_range=(0.5, 2.0), cat_max_ratio=0.75)
    dataset = build_seg_dataset(data, "train")
    return [pseudo_collate([dataset[((start * batch + i) % len(dataset), start * batch + i)] for i in range(batch)])
            for start in range(4)]


def train_step(model: SegEncoderDecoder, optimizer: DeviceOptimWrapper, data: Iterator[dict]) -> None:
    """The Runner's step: data preprocessor, autocast forward with both heads' losses, backward, AdamW."""
    model.train_step(next(data), optimizer)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    torch.manual_seed(0)
    model = build_model(args.size, args.img_size, args.depth, amp, device, args.plain)
    if args.compile:
        model.backbone.compile()
    optimizer = DeviceOptimWrapper(adamw_layer_decay(model, 1e-4, 0.05, 0.65, model.backbone.net.num_layers,
                                                     (0.9, 0.999), backbone_prefix=BACKBONE_PREFIX),
                                   precision="bf16" if amp else "fp32")
    mode = ("bf16" if amp else "fp32") + (" compiled" if args.compile else "")
    stride = model.test_cfg.stride[0]
    print(f"UperNet, ViT-{args.size} depth {model.backbone.net.num_layers}, {args.img_size} px crops, {mode}, "
          f"{RECIPES[args.plain]}'s model (stride {stride}); {hardware(device)}")
    image = torch.randint(0, 256, (3, *args.test_size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        synthesize(scratch, num_images=16, size=args.img_size, seed=0, val_fraction=0.25, progress=False)
        for batch in args.batch:
            data = cycle(train_batches(Path(scratch), args.img_size, batch))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            model.train()
            step = partial(train_step, model, optimizer, data)
            train = best_rates({"train": step}, batch, args.rounds, args.steps, device)["train"]
            memory = ""
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 1e9
                memory = f", {peak:.2f} GB peak = {peak / MMSEG_TRAIN_MEMORY_GB:.2f} x mmseg's 9.96 GB"
            print(f"  batch {batch}: train {train / batch:.2f} it/s ({train:.2f} images/s{memory})", flush=True)
            if args.sync_check:
                report_host_syncs("the segmentation training step", step, device)
    model.eval()
    predict = partial(model.val_step, {"inputs": [image]})
    with torch.inference_mode():
        infer = best_rates({"predict": predict}, 1, args.rounds, args.steps, device)["predict"]
    print(f"  sliding-window inference, {args.test_size[0]} x {args.test_size[1]} images: {infer:.2f} images/s "
          f"({1000 / infer:.0f} ms/image) = {infer / MMSEG_INFERENCE_IMAGES_PER_SECOND:.2f} x mmseg's 140 ms/image")


if __name__ == "__main__":
    main()
