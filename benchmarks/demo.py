"""`droppos-bench demo`: what DropPos does, shown with tiny ViTs on a CPU in about two minutes.

The images are colour ramps (benchmarks/synthetic/ramps.py): 64 px, a 4 x 4 grid of 16 px patches, red growing by
column and green by row from a random per-image origin, so a patch's colour gives its position only relative to the
other patches. The demo
1. pre-trains a tiny DropPos (`droppos_tiny_ramps`) on unlabelled ramps of one direction;
2. measures its position accuracy on held-out ramps with many anchors (gamma_pos 0.25) and almost none (0.95): it
   places the dropped patches by relating them to the patches whose positions it was given (paper Sec. 3.2);
3. runs the harness's `demo` suite: that encoder and a random init fine-tuned with the same recipe
   (`finetune_tiny_ramps`) to tell the ramps' direction (4 classes) from 16 labelled images per class, then both
   frozen through k-NN and linear heads (`knn_tiny_ramps`, `linear_tiny_ramps`) on 64 labelled images per class,
   written so that the evaluation crop puts one flat cell in each patch (ramps.py: `eval_aligned`).
Every number is printed beside its chance level. Each stage's log is in its folder under `--out`; the terminal gets
a line per stage. The models are far too small for the paper's tables, and the report says so.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import datasets, transforms

from engine.safe_io import write_json_atomic

from .harness.job_lock import LOG_FILE
from .harness.process import run_logged
from .harness.run import JobsFailedError, report_suite, run_suite, suite_results
from .harness.suite import Suite, load_suite, resolve_suite
from .synthetic.ramps import DIRECTIONS, write_direction_task, write_unlabelled_ramps

DEMO_DEFAULTS: dict[str, Any] = dict(out="work_dirs/demo", seed=0)
# images: unlabelled for pre-training, held out for position accuracy, labelled and validation per class
# (frozen_per_class: labelled images per class of the frozen protocols' eval-aligned set)
FULL = dict(unlabelled=1600, held_out=128, per_class=16, val_per_class=32, frozen_per_class=64)
QUICK = dict(unlabelled=64, held_out=16, per_class=4, val_per_class=4, frozen_per_class=8)  # --quick (CI): too little
POSITIONS = 16  # the 4 x 4 patch grid: position chance 1/16
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {"cls.finetune": {"schedule.epochs": 1, "batch_size": 8,
                                                               "effective_batch": 8}}
log = logging.getLogger("droppos_bench.demo")


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Every stage; writes `demo_summary.json` and the report, prints a line per stage and the results table."""
    out = Path(out)
    start = time.perf_counter()
    sizes = QUICK if quick else FULL
    print(f"droppos-bench demo: tiny ViTs on 64 px colour ramps{' (--quick: too short to learn anything)' * quick}; "
          f"stage logs under {out}", flush=True)
    data = write_data(out / "data", sizes, seed)
    checkpoint = pretrain(out / "pretrain", data / "ramps", seed, quick)
    anchors = anchor_accuracy(checkpoint, data / "ramps")
    print(f"position accuracy on {sizes['held_out']} held-out ramps: {anchors['many']:.1f}% with many anchors, "
          f"{anchors['none']:.1f}% with almost none (chance {100 / POSITIONS:.2f}%)", flush=True)
    link = out / "droppos_encoder.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to((checkpoint.parent / "encoder.safetensors").resolve())
    suite = demo_suite(out, quick)
    jobs = run_suite(suite)
    report = report_suite(suite, out / "report")
    results = {result.label: result.metrics for result in suite_results(suite)}
    summary = dict(data=str(data), sizes=sizes, checkpoint=str(checkpoint), anchors=anchors, jobs=jobs, results=results,
                   report=str(report), seconds=round(time.perf_counter() - start, 1))
    write_json_atomic(out / "demo_summary.json", summary)
    print_results(summary)
    print(f"report: {report}; summary: {out / 'demo_summary.json'}; {summary['seconds']:.0f} s")
    failed = sorted(job for job, state in jobs.items() if state == "failed")
    if failed:
        raise JobsFailedError(f"demo jobs failed: {', '.join(failed)}; logs in {suite.work_dir}/<job>/{LOG_FILE}")
    return summary


def write_data(data: Path, sizes: dict[str, int], seed: int) -> Path:
    """Unlabelled ramps of one direction (data/ramps), the direction task (data/ramp_directions) and its
    eval-aligned set for the frozen protocols (data/ramp_directions_aligned), written anew."""
    for name in ("ramps", "ramp_directions", "ramp_directions_aligned"):
        shutil.rmtree(data / name, ignore_errors=True)
    write_unlabelled_ramps(data / "ramps", sizes["unlabelled"], sizes["held_out"], seed)
    write_direction_task(data / "ramp_directions", sizes["per_class"], sizes["val_per_class"], seed)
    write_direction_task(data / "ramp_directions_aligned", sizes["frozen_per_class"], sizes["val_per_class"], seed,
                         eval_aligned=True)
    print(f"data: {sizes['unlabelled']} unlabelled ramps, {sizes['held_out']} held out; {len(DIRECTIONS)} directions "
          f"x {sizes['per_class']} labelled, x {sizes['frozen_per_class']} eval-aligned (+{sizes['val_per_class']} "
          f"val each) in {data}", flush=True)
    return data


def pretrain(work_dir: Path, data: Path, seed: int, quick: bool) -> Path:
    """`droppos_tiny_ramps` in its own process, its output in work_dir/job.log; the last epoch's checkpoint."""
    epochs = 1 if quick else None
    overrides = {"data.root": data, "work_dir": work_dir, "seed": seed}
    if epochs:
        overrides |= {"schedule.epochs": epochs, "schedule.warmup_epochs": 0, "checkpoint.interval": epochs,
                      "batch_size": 16, "effective_batch": 16}
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"pre-training a tiny DropPos (droppos_tiny_ramps): log in {work_dir / LOG_FILE}", flush=True)
    command = [sys.executable, "-m", "benchmarks.cli", "pretrain", "droppos_tiny_ramps",
               *(f"{key}={value}" for key, value in overrides.items())]
    if run_logged(command, work_dir) != 0:
        raise JobsFailedError(f"the demo's pre-training failed; its log: {work_dir / LOG_FILE}")
    return max(work_dir.glob("epoch_*.pth"), key=lambda path: int(path.stem.split("_")[1]))


def anchor_accuracy(checkpoint: Path, data: Path) -> dict[str, Any]:
    """Position accuracy (%) of the dropped patches of the held-out ramps, mean over the masking ratios, with many
    anchors (gamma_pos 0.25) and almost none (0.95); the images as they are, so patches stay on the ramp cells."""
    from pretrain.build import load_droppos
    from pretrain.position_accuracy import POS_MASK_RATIOS, position_accuracy_grid

    model = load_droppos(checkpoint)
    exact = transforms.Compose([transforms.ToTensor(),
                                transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    batches = torch.utils.data.DataLoader(datasets.ImageFolder(data / "val", exact), batch_size=64)
    grid = position_accuracy_grid(model, batches)
    columns = {ratio: grid[:, i].nanmean().item() for i, ratio in enumerate(POS_MASK_RATIOS)}
    return dict(many=columns[0.25], none=columns[0.95], grid=grid.tolist())


def demo_suite(out: Path, quick: bool) -> Suite:
    """The shipped demo suite with its paths in `out`; `quick` shortens the fine-tuning to an epoch (CI)."""
    os.environ["DROPPOS_DEMO"] = str(out.resolve())
    suite = load_suite(resolve_suite("demo"))
    if not quick:
        return suite
    benchmarks = tuple(replace(b, overrides={**b.overrides, **QUICK_OVERRIDES.get(b.name, {})})
                       for b in suite.benchmarks)
    return replace(suite, benchmarks=benchmarks)


def print_results(summary: dict[str, Any]) -> None:
    """The demo's numbers beside chance, one line each."""
    anchors, results = summary["anchors"], summary["results"]
    chance_direction = 100 / len(DIRECTIONS)
    rows = [("position accuracy, many anchors (gamma_pos 0.25)", anchors["many"], None, 100 / POSITIONS),
            ("position accuracy, almost none (gamma_pos 0.95)", anchors["none"], None, 100 / POSITIONS)]
    measures = [("ft_top1", f"direction top-1 after fine-tuning on {summary['sizes']['per_class']} labels per class"),
                ("knn_top1", f"the same, frozen, k-NN (k=1), {summary['sizes']['frozen_per_class']} labels per class"),
                ("linear_top1", f"the same, frozen, linear heads, {summary['sizes']['frozen_per_class']} per class")]
    rows += [(name, results.get("DropPos (tiny)", {}).get(key), results.get("random init", {}).get(key),
              chance_direction) for key, name in measures]
    print(f"{'':58} {'DropPos':>8} {'random':>8} {'chance':>8}")
    for name, droppos, random, chance in rows:
        cells = [f"{value:8.1f}" if value is not None else f"{'-':>8}" for value in (droppos, random)]
        cells.append(f"{chance:8.2f}")
        print(f"{name:58} {' '.join(cells)}")
