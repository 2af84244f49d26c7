"""Fine-tuning throughput of our ViT against timm's own ViT under the same loop, and of the data loader alone.

    python benchmarks/finetune_throughput.py --batch 64 128 --workers 8 16             # cuda: bf16, SDPA
    python benchmarks/finetune_throughput.py --compile                                 # + torch.compile
    python benchmarks/finetune_throughput.py --size tiny --depth 2 --batch 8 --steps 2 --workers 2   # CPU

Train step: bf16 autocast forward (fp32 on cpu unless --amp), soft-target cross-entropy (what Mixup/CutMix
produce), backward, AdamW. Eval step: forward in inference mode. Both models hold the same weights (timm's
keys are ours) and must give the same logits in fp32 before anything is timed. Prints images/s of each and
the ratio ours / timm. The loader line times the fine-tuning input pipeline alone (JPEG decode,
RandomResizedCrop, RandAugment, random erasing) over an ImageNet-layout folder (`--data`, default: synthetic
scenes at --loader-image-size px written to a temporary folder): it must exceed the train step's images/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import timm
import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from backbone import build_vit
from benchmarks.synthetic import synthesize
from benchmarks.timing import Step, best_rates, hardware, report_host_syncs, step_parser
from cls.data import train_transform
from cls.finetune import CONFIGS_DIR
from engine import load_config
from engine.images import image_folder


def build_pair(size: str, img_size: int, depth: int | None, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Our ViT and timm's with identical weights (global average pooling + fc_norm, drop path 0.1)."""
    extra = {} if depth is None else {"depth": depth}
    torch.manual_seed(0)
    ours = build_vit(size, img_size=img_size, num_classes=num_classes, global_pool="avg", drop_path_rate=0.1,
                     **extra)
    reference = timm.create_model(f"vit_{size}_patch16_224", pretrained=False, img_size=img_size,
                                  num_classes=num_classes, global_pool="avg", drop_path_rate=0.1, **extra)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def check_same_logits(ours: nn.Module, reference: nn.Module, images: torch.Tensor) -> None:
    """In eval mode and fp32 the two models must agree, or the ratio compares different computations."""
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(images), reference.eval()(images), atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"timm's ViT disagrees with ours on the same weights: {m}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor,
               amp: bool) -> None:
    """One fine-tuning step as our Runner takes it: autocast forward and loss, backward, optimizer step."""
    with torch.autocast(images.device.type, torch.bfloat16, enabled=amp):
        loss = SoftTargetCrossEntropy()(model(images), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def eval_step(model: nn.Module, images: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(images.device.type, torch.bfloat16, enabled=amp):
        return model(images)


def loader_images_per_second(root: Path, img_size: int, batch: int, workers: int, batches: int) -> float:
    """Images/s of the fine-tuning input pipeline alone, after the workers' first batch (their start-up)."""
    aug = load_config("finetune_vit_base_100ep", configs_dir=CONFIGS_DIR).aug  # the recipe's per-image work
    dataset = image_folder(root, "train", train_transform(img_size, aug))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         pin_memory=torch.cuda.is_available(), drop_last=True)
    batches_iter: Iterable = iter(loader)
    next(batches_iter)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in batches_iter)
    return count / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    parser = step_parser(__doc__, default_batch=128, default_steps=10 if torch.cuda.is_available() else 3)
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="loader-only runs with these workers")
    parser.add_argument("--data", type=Path, help="ImageNet-layout folder for the loader (default: synthetic)")
    parser.add_argument("--loader-image-size", type=int, default=368, help="side of the synthetic JPEGs")
    parser.add_argument("--loader-batches", type=int, default=20)
    return parser.parse_args()


def compare_models(args: argparse.Namespace, device: torch.device, amp: bool) -> float:
    """Prints train and eval images/s of ours and timm's per batch size; returns our best train images/s."""
    ours, reference = (m.to(device) for m in build_pair(args.size, args.img_size, args.depth, 1000))
    check_same_logits(ours, reference, torch.randn(2, 3, args.img_size, args.img_size, device=device))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
                  for name, model in (("ours", ours), ("timm", reference))}
    models = {"ours": ours.train(), "timm": reference.train()}
    if args.compile:
        for model in models.values():
            model.compile()
    mode = ("bf16" if amp else "fp32") + (" compiled" if args.compile else "")
    print(f"fine-tuning ViT-{args.size}/16 depth {ours.num_layers}, {args.img_size} px, {mode}; {hardware(device)}")
    print("  timm's logits == ours on the same weights (fp32): ok")
    print(f"  {'batch':>5} {'train ours':>10} {'train timm':>10} {'ours/timm':>9} "
          f"{'eval ours':>10} {'eval timm':>10} {'ours/timm':>9}   (images/s)")
    best_train = 0.0
    for batch in args.batch:
        images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
        targets = torch.softmax(torch.randn(batch, 1000, device=device), dim=-1)
        train: dict[str, Step] = {name: partial(train_step, model, optimizers[name], images, targets, amp)
                                  for name, model in models.items()}
        evaluate: dict[str, Step] = {name: partial(eval_step, model, images, amp) for name, model in models.items()}
        rates = best_rates(train, batch, args.rounds, args.steps, device)
        for model in models.values():
            model.eval()
        eval_rates = best_rates(evaluate, batch, args.rounds, args.steps, device)
        for model in models.values():
            model.train()
        best_train = max(best_train, rates["ours"])
        ratio = lambda r: r["ours"] / r["timm"] if r["timm"] else float("nan")  # noqa: E731
        print(f"  {batch:>5} {rates['ours']:10.1f} {rates['timm']:10.1f} {ratio(rates):9.3f} "
              f"{eval_rates['ours']:10.1f} {eval_rates['timm']:10.1f} {ratio(eval_rates):9.3f}", flush=True)
    if args.sync_check:
        report_host_syncs("our fine-tuning step", train["ours"], device)
    return best_train


def compare_loader(args: argparse.Namespace, train_rate: float) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = Path(scratch) / "synth"
            synthesize(root, num_images=200, size=args.loader_image_size, seed=0, val_fraction=0.1,
                       progress=False)
        batch = max(args.batch)
        print(f"loader alone (decode + RandAugment + erasing to {args.img_size} px, batch {batch}) on {root}")
        for workers in args.workers:
            rate = loader_images_per_second(root, args.img_size, batch, workers, args.loader_batches)
            print(f"  {workers:>3} workers: {rate:8.1f} images/s = {rate / train_rate:.2f} x our train step",
                  flush=True)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    train_rate = compare_models(args, device, amp)
    if args.workers:
        compare_loader(args, train_rate)


if __name__ == "__main__":
    main()
