"""Does a tiny DropPos pre-training help a tiny fine-tune on the synthetic scenes? Pre-trains
`droppos_tiny_synth`, then runs `finetune_tiny_synth` from it and from random init with the same recipe.

    python benchmarks/finetune_from_pretrained.py --images 1000 --size 96 --pretrain-epochs 30 --epochs 40
    python benchmarks/finetune_from_pretrained.py --size 64 --set aug.crop_scale="(0.35, 1.0)"

Prints the val top-1 of both runs per epoch, their final values and the majority-class share of val (what
always answering the commonest class scores). Everything goes under --out.
"""
from __future__ import annotations

import argparse
import ast
import json
from collections import Counter
from pathlib import Path

from benchmarks.synthetic import synthesize
from cls.finetune import run_finetune
from engine.images import image_folder
from pretrain.train import run_pretrain


def majority_share(root: Path) -> float:
    """Top-1 (%) of always predicting the commonest val class."""
    targets = image_folder(root, "val", transform=None).targets
    return 100 * Counter(targets).most_common(1)[0][1] / len(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fine-tuning overrides (Python literals), e.g. aug.auto_augment=None")
    parser.add_argument("--out", type=Path, default=Path("work_dirs/finetune_from_pretrained"))
    args = parser.parse_args()
    overrides = {key: ast.literal_eval(value) for key, value in (item.split("=", 1) for item in args.set)}

    data = args.out / f"synth{args.images}_{args.size}"
    if not (data / "synth_meta.json").is_file():
        synthesize(data, args.images, args.size, seed=0, overwrite=True)
    pretrained = args.out / f"droppos_{args.images}_{args.size}_{args.pretrain_epochs}ep"
    if not (pretrained / "encoder.safetensors").is_file():
        run_pretrain("droppos_tiny_synth", {"data.root": str(data), "work_dir": str(pretrained),
                                            "model.img_size": args.size, "schedule.epochs": args.pretrain_epochs})
    curves = {}
    for name, ckpt in (("droppos", str(pretrained / "encoder.safetensors")), ("random init", None)):
        metrics = run_finetune("finetune_tiny_synth", {
            "data.root": str(data), "work_dir": str(args.out / f"finetune_{name.replace(' ', '_')}"), "ckpt": ckpt,
            "model.img_size": args.size, "schedule.epochs": args.epochs, **overrides})
        curves[name] = [row["top1"] for row in json.loads(metrics.read_text())["history"]]
    print(f"{args.images} scenes at {args.size} px, DropPos pre-trained {args.pretrain_epochs} epochs, "
          f"fine-tuned {args.epochs} epochs {overrides or ''}")
    for name, curve in curves.items():
        print(f"  {name:>11}: final top-1 {curve[-1]:.1f}, best {max(curve):.1f}; per epoch "
              + " ".join(f"{v:.0f}" for v in curve))
    print(f"  majority class of val: {majority_share(data):.1f}")


if __name__ == "__main__":
    main()
