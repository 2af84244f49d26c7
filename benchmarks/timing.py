"""Timing helpers shared by the throughput benchmarks: images/s of a step, best of alternating rounds, FLOPs."""
from __future__ import annotations

import argparse
import contextlib
import os
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU

Step = Callable[[], object]
SYNC_WARNING = "called a synchronizing CUDA operation"  # what CUDA's sync debug mode warns
REPO = Path(__file__).resolve().parent.parent


def images_per_second(step: Step, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Mean throughput over `steps` after `warmup` steps; synchronises only at the ends of the timed loop."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def best_rates(steps: dict[str, Step], batch: int, rounds: int, steps_per_round: int,
               device: torch.device) -> dict[str, float]:
    """Best images/s of each step over rounds that alternate them, so order and load drift cancel out.
    A step that runs out of GPU memory scores 0."""
    rates = {name: 0.0 for name in steps}
    for i in range(rounds):
        for name, step in steps.items():
            if i and not rates[name]:
                continue
            try:
                rates[name] = max(rates[name], images_per_second(step, batch, steps_per_round, 2 if i == 0 else 0,
                                                                 device))
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
    return rates


def step_flops(step: Step) -> int:
    """FLOPs (2 per multiply-add) of one step, counted on the real step."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Dense bf16 peak FLOP/s of this GPU (table by name), the override, or None when unknown."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def hardware(device: torch.device) -> str:
    """The GPU's name, or the CPU threads and load (other jobs on the cores slow every figure)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU x{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"


def host_sync_sites(step: Step, steps: int = 2) -> Counter[str]:
    """Where `steps` calls of `step` synchronise with the host, counted per site, from the warnings CUDA's sync
    debug mode raises (see `sync_debug_warnings`): our innermost frame, and the library call it went through."""
    sites: Counter[str] = Counter()

    def record(message: Warning | str, *_: object, **__: object) -> None:
        if SYNC_WARNING in str(message):
            sites[sync_site(traceback.extract_stack()[:-1])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        for _ in range(steps):
            step()
    return sites


def sync_site(stack: traceback.StackSummary) -> str:
    """'file:line function' of the innermost frame of this project, plus the innermost frame below it if that is
    in a library (torch's frames, the warnings module's and this module's left out)."""
    skipped = {Path(__file__), Path(warnings.__file__)}
    frames = [f for f in stack if "/torch/" not in f.filename and Path(f.filename) not in skipped]
    ours = [i for i, f in enumerate(frames) if is_project_file(f.filename)]
    if not ours:
        return "outside this project"
    frame = frames[ours[-1]]
    site = f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno} {frame.name}"
    if ours[-1] + 1 < len(frames):
        inner = frames[-1]
        site += f" via {Path(inner.filename).name}:{inner.lineno} {inner.name}"
    return site


def is_project_file(filename: str) -> bool:
    path = Path(filename).resolve()
    return path.is_relative_to(REPO) and "site-packages" not in path.parts


@contextlib.contextmanager
def sync_debug_warnings(device: torch.device) -> Iterator[bool]:
    """CUDA's sync debug mode set to warn for the block (yields True), or nothing off cuda (yields False)."""
    if device.type != "cuda":
        yield False
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield True
    finally:
        torch.cuda.set_sync_debug_mode("default")


def report_host_syncs(name: str, step: Step, device: torch.device) -> None:
    """Prints the host syncs of two calls of an already warmed-up step, or that the check needs cuda."""
    with sync_debug_warnings(device) as checking:
        if not checking:
            print(f"  host syncs in {name}: not checked (needs cuda)")
            return
        sites = host_sync_sites(step)
    if not sites:
        print(f"  host syncs in {name}: none in 2 steps")
        return
    print(f"  host syncs in {name}: {sum(sites.values())} in 2 steps, at")
    for site, count in sites.most_common():
        print(f"    {count:>3} x {site}")


def step_parser(doc: str, default_batch: int, default_steps: int) -> argparse.ArgumentParser:
    """The options every throughput script takes: model size and depth, input size, batches, timing rounds,
    device, bf16 autocast (default on for cuda only) and torch.compile."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base" if cuda else "tiny", choices=("tiny", "small", "base", "large"))
    parser.add_argument("--depth", type=int, help="override the encoder depth (quick CPU runs)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[default_batch] if cuda else [16], help="run each")
    parser.add_argument("--steps", type=int, default=default_steps, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating ours and the reference; best kept")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for cuda, off on cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model(s)")
    parser.add_argument("--sync-check", action="store_true",
                        help="after timing, list where two of our training steps synchronise with the host (cuda)")
    return parser
