"""ViTDet Mask R-CNN throughput: training and inference images/s, batched mask pasting against torchvision's
loop, and (optionally) COCO evaluation time of faster-coco-eval against pycocotools.

    python benchmarks/det_throughput.py                          # cuda: ViT-B, 1024 px, batch 2, bf16
    python benchmarks/det_throughput.py --compile --batch 2 4
    python benchmarks/det_throughput.py --coco-eval-images 5000  # + the COCO evaluation comparison
    python benchmarks/det_throughput.py --size tiny --depth 2 --img-size 256 --steps 2    # CPU

Inputs are synthetic scenes through the real pipelines (large scale jitter with boxes and masks for training,
the test-time resize for inference). Train step: the Runner's (autocast forward with the five losses,
backward, AdamW with layer decay). Prints images/s and, for training, the ratio to ViTDet's published ViT-B
figure (0.314 s/iter at 64 images per iteration on 64 A100s: 3.2 images/s per GPU, 10.9 GB); on another
GPU or model size that ratio compares hardware too. Inference includes pasting the masks at the original
size, which is timed on its own against torchvision's paste_masks_in_image (100 masks, a 640 x 480 image).
"""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from functools import partial
from itertools import cycle
from pathlib import Path

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from benchmarks.coco_eval_speed import compare_coco_eval
from benchmarks.synthetic import synthesize
from benchmarks.timing import best_rates, hardware, report_host_syncs, step_parser
from det.data import CocoDetection, coco_paths, collate, eval_transform, lsj_transform
from det.model import ViTDetMaskRCNN, build_mask_rcnn
from det.paste import paste_masks
from det.train import vitdet_adamw

VITDET_IMAGES_PER_SECOND = 64 / 0.314 / 64  # ViTDet ViT-B Mask R-CNN, per A100


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = step_parser(__doc__, default_batch=2, default_steps=10 if cuda else 2)
    parser.set_defaults(img_size=1024 if cuda else 256, batch=[2])
    parser.add_argument("--scene-size", type=int, default=512, help="side of the synthetic JPEGs")
    parser.add_argument("--coco-eval-images", type=int, default=0, help="also compare COCO evaluation times")
    return parser.parse_args()


def batches(root: Path, img_size: int, batch: int, train: bool, model: ViTDetMaskRCNN) -> list[dict]:
    """Four batches of synthetic scenes through the training or test pipeline, on the model's device (moved by
    its data preprocessor, as the Runner does)."""
    annotations, images = coco_paths(root, "train" if train else "val")
    transform = lsj_transform(img_size) if train else eval_transform(img_size)
    dataset = CocoDetection(annotations, images, transform, train=train)
    out = []
    for start in range(4):
        samples = [dataset[((start * batch + i) % len(dataset), start * batch + i)] for i in range(batch)]
        out.append(model.data_preprocessor.cast_data(collate(samples)))
    return out


def train_step(model: ViTDetMaskRCNN, optimizer: torch.optim.Optimizer, data: Iterator[dict], amp: bool) -> None:
    batch = next(data)
    with torch.autocast(batch["images"].device.type, torch.bfloat16, enabled=amp):
        loss = model(**batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def predict_step(model: ViTDetMaskRCNN, data: Iterator[dict]) -> None:
    with torch.inference_mode():
        model(**next(data), mode="predict")


def compare_paste(device: torch.device, rounds: int) -> None:
    """Our paste (per box on a CPU, batched on a GPU) against torchvision's loop: 100 masks, one 640 x 480 image."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(100, 2, generator=generator) * torch.tensor([500.0, 350.0])
    boxes = torch.cat([corners, corners + 16 + torch.rand(100, 2, generator=generator) * 120], dim=1).to(device)
    masks = torch.rand(100, 28, 28, generator=generator).to(device)
    steps = {"ours": partial(paste_masks, masks, boxes, 480, 640),
             "torchvision": partial(paste_masks_in_image, masks[:, None], boxes, (480, 640))}
    rates = best_rates(steps, 1, rounds, 5, device)
    print(f"mask pasting (100 masks into 640 x 480): ours {rates['ours']:.1f} images/s, torchvision "
          f"{rates['torchvision']:.1f} images/s, ratio {rates['ours'] / rates['torchvision']:.1f}x")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    extra = {} if args.depth is None else {"depth": args.depth}
    torch.manual_seed(0)
    model = build_mask_rcnn(80, args.size, img_size=args.img_size, precision="bf16" if amp else "fp32",
                            **extra).to(device)
    if args.compile:
        model.backbone.compile()
    optimizer = vitdet_adamw(model, 1e-4, 0.1, 0.7, (0.9, 0.999))
    mode = ("bf16" if amp else "fp32") + (" compiled" if args.compile else "")
    print(f"ViTDet Mask R-CNN, ViT-{args.size} depth {model.backbone.net.num_layers}, {args.img_size} px, {mode}; "
          f"{hardware(device)}")
    with tempfile.TemporaryDirectory() as scratch:
        synthesize(scratch, num_images=16, size=args.scene_size, seed=0, val_fraction=0.5, progress=False)
        for batch in args.batch:
            train_data = batches(Path(scratch), args.img_size, batch, True, model)
            eval_data = batches(Path(scratch), args.img_size, batch, False, model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            model.train()
            step = partial(train_step, model, optimizer, cycle(train_data), amp)
            train = best_rates({"train": step}, batch, args.rounds, args.steps, device)["train"]
            memory = (f", {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak" if device.type == "cuda"
                      else "")
            model.eval()
            infer = best_rates({"predict": partial(predict_step, model, cycle(eval_data))}, batch, args.rounds,
                               args.steps, device)["predict"]
            print(f"  batch {batch}: train {train:.2f} images/s ({train / batch:.2f} it/s{memory}), "
                  f"= {train / VITDET_IMAGES_PER_SECOND:.2f} x ViTDet's 3.2 images/s per A100; "
                  f"inference {infer:.2f} images/s", flush=True)
            if args.sync_check:
                model.train()
                report_host_syncs("the detection training step", step, device)
    compare_paste(device, args.rounds)
    if args.coco_eval_images:
        compare_coco_eval(args.coco_eval_images, 128)


if __name__ == "__main__":
    main()
