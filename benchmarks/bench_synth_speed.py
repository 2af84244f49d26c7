"""Time `synthesize` single-threaded against the 100 images/s requirement.

Usage: python benchmarks/bench_synth_speed.py --images 500 --size 224
The time covers everything synthesize does: rendering, JPEG and PNG encoding, links and json.
"""

from __future__ import annotations

import os

# The requirement is per core: keep BLAS from spreading the small matrix products over threads.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks.synthetic import synthesize  # noqa: E402

REQUIRED_IMAGES_PER_SECOND = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best one is reported (machine noise)")
    parser.add_argument("--workdir", default=None, help="where to write (default: the system temp dir); "
                        "file creation speed differs a lot between filesystems")
    args = parser.parse_args()
    walls, cpus = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.workdir) as out_dir:
            wall, cpu = time.perf_counter(), time.process_time()
            summary = synthesize(out_dir, args.images, args.size, args.seed, progress=False)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    rate = args.images / min(walls)
    print(f"synth {args.size}px: {rate:.1f} img/s = {rate / REQUIRED_IMAGES_PER_SECOND:.2f}x "
          f"the {REQUIRED_IMAGES_PER_SECOND:.0f} img/s requirement")
    print(f"  best of {args.repeats} runs of {args.images} images "
          f"({sum(summary['coco']['annotations'].values())} annotations); "
          f"median {args.images / statistics.median(walls):.1f} img/s, "
          f"cpu-time rate {args.images / min(cpus):.1f} img/s")


if __name__ == "__main__":
    main()
