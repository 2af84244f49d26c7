"""Forward (and forward + backward) throughput of our ViT against timm's VisionTransformer on the same weights.

    python benchmarks/bench_backbone.py --size base --batch 32 --device cuda --amp
    python benchmarks/bench_backbone.py --size tiny --batch 16              # CPU

Prints the best images/s of each over alternating rounds and the ratio ours / timm (1.0 = no overhead).
`--amp` runs in bf16 autocast; `--compile` wraps both models in torch.compile.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import timm
import torch

from backbone import build_vit


def images_per_second(model: torch.nn.Module, images: torch.Tensor, steps: int, train: bool, amp: bool) -> float:
    """Mean throughput over `steps` after two warm-up steps; synchronises only at the ends of the timed loop."""
    model.train(train)
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def step() -> None:
        with autocast, torch.set_grad_enabled(train):
            out = model(images)
        if train:
            out.float().mean().backward()

    for _ in range(2):
        step()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "base", "large"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the two models; best kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--train", action="store_true", help="time forward + backward")
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = timm.create_model(f"vit_{args.size}_patch16_224", pretrained=False, num_classes=1000)
    ours = build_vit(args.size, num_classes=1000, pos_embed_trainable=True)
    ours.load_state_dict(reference.state_dict())
    models = {"ours": ours.to(args.device), "timm": reference.to(args.device)}
    if args.compile:
        models = {name: torch.compile(model) for name, model in models.items()}
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)
    rates = {name: 0.0 for name in models}
    for _ in range(args.rounds):  # alternating rounds, best of each: order and load drift cancel out
        for name, model in models.items():
            rates[name] = max(rates[name], images_per_second(model, images, args.steps, args.train, args.amp))
    mode = ("train" if args.train else "inference") + (" bf16" if args.amp else " fp32") + (
        " compiled" if args.compile else "")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"ViT-{args.size}/16 {mode}, batch {args.batch}, {device}")
    print(f"  ours {rates['ours']:.1f} img/s, timm {rates['timm']:.1f} img/s, ratio ours/timm "
          f"{rates['ours'] / rates['timm']:.3f}")


if __name__ == "__main__":
    main()
