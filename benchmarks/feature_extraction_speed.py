"""The frozen protocols' feature extraction against the encoder's plain inference at the same batch.

    python benchmarks/feature_extraction_speed.py                           # cuda: ViT-B, bf16, batch 256, 16 workers
    python benchmarks/feature_extraction_speed.py --size small --batch 64 --images 640 --workers 1        # CPU

Plain inference: `forward_features` (the pooled feature) of random images already on the device: no loader, no
writes, best of --rounds. Extraction: `cls.features.extract` over ImageNet-like JPEGs (textured, about 110 KB at
500 x 375, benchmarks/data_scale_gen.py; --unique of them written, the rest hard links to them, read from the page
cache as a warm file system would serve them) through the eval transform (resize 256, center crop 224) and the loader
workers, every row (mean patch token, [CLS], the last blocks' [CLS]) written to the float16 cache: images/s from
the call to the last write, worker start-up included. The ratio extraction / inference is the figure: at >= 0.9
the loader and the writes keep up with the encoder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backbone import build_vit
from benchmarks.data_scale_gen import imagenet_jpegs
from benchmarks.timing import hardware, images_per_second
from cls.features import extract
from engine.images import eval_transform, image_folder


def plain_inference(net: torch.nn.Module, batch: int, device: torch.device, bf16: bool, rounds: int,
                    steps: int) -> float:
    """Best images/s of the encoder's forward on random device-resident images."""
    images = torch.randn(batch, 3, 224, 224, device=device)

    def step() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            return net.forward_features(images)

    return max(images_per_second(step, batch, steps, warmup=1, device=device) for _ in range(rounds))


def jpeg_folder(root: Path, images: int, unique: int) -> Path:
    """root/imagenet/train/<class>/ with `images` files, the first `unique` of them written, the others linked."""
    for _ in imagenet_jpegs(root, unique, np.random.default_rng(0)):
        pass
    written = sorted((root / "imagenet" / "train").rglob("*.JPEG"))
    for index in range(unique, images):
        source = written[index % unique]
        source.parent.joinpath(f"copy{index}_{source.name}").hardlink_to(source)
    return root / "imagenet"


def extraction(net: torch.nn.Module, root: Path, out: Path, batch: int, workers: int, device: torch.device,
               bf16: bool, last_layers: int) -> tuple[float, int]:
    """(images/s, images) of one whole extraction into a fresh cache folder."""
    dataset = image_folder(root, "train", eval_transform(224))
    start = time.perf_counter()
    extract(net, dataset, out, batch_size=batch, num_workers=workers, last_layers=last_layers, device=device,
            bf16=bf16)
    return len(dataset) / (time.perf_counter() - start), len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=10240, help="JPEGs to extract (default: 40 batches of 256)")
    parser.add_argument("--unique", type=int, default=512, help="of them written; the others are hard links")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--last-layers", type=int, default=4, choices=(1, 4))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed forward passes per round of plain inference")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        data = jpeg_folder(Path(tmp) / "data", args.images, min(args.unique, args.images))
        torch.manual_seed(0)
        net = build_vit(args.size).eval().to(device)
        print(f"ViT-{args.size}, batch {args.batch}, {'bf16' if bf16 else 'fp32'}, {args.workers} loader workers, "
              f"{hardware(device)}", flush=True)
        plain = plain_inference(net, args.batch, device, bf16, args.rounds, args.steps)
        print(f"plain inference: {plain:,.1f} images/s", flush=True)
        rate, count = extraction(net, data, Path(tmp) / "cache", args.batch, args.workers, device, bf16,
                                 args.last_layers)
        print(f"extraction of {count:,} JPEGs into the cache: {rate:,.1f} images/s", flush=True)
        print(f"extraction / plain inference: {rate / plain:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
