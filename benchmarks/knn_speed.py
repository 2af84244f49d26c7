"""DINO's weighted k-NN (`cls.knn`) on random features: the chunked search's time and memory, and the brute force
(the whole query x train similarity matrix) at a size where that fits.

    python -m benchmarks.knn_speed            # 100k x 768 train against 10k queries; reference 20k x 2k
    python -m benchmarks.knn_speed --quick    # 20k x 2k; reference 5k x 500: seconds

On the CPU, and on cuda when there is one (train features on the GPU, and streamed from the host). Prints the
wall time, the peak memory above the start (the resident set, sampled, on the CPU: tracemalloc does not see torch's
buffers; torch's allocator peak on cuda), the chunk sizes and the time extrapolated to ImageNet (1,281,167 train x
50,000 val: the cost scales with N x Q); then, at the reference size, the brute force's time and peak, chunked /
brute force, and whether their votes agree.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.timing import hardware
from cls.knn import KS, QUERY_CHUNK, TEMPERATURE, TRAIN_CHUNK, knn_accuracy, knn_predict

IMAGENET = (1_281_167, 50_000)


def features(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(classes, (n,), generator=gen)


def brute_force(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, classes: int,
                ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """The reference: the whole Q x N similarity matrix at once, then the same top-k and weighted votes."""
    sims = F.normalize(queries, dim=1) @ F.normalize(train, dim=1).T
    top, index = sims.topk(max(ks), dim=1)
    weights, labels = (top / TEMPERATURE).exp(), train_labels[index]
    return {k: torch.zeros(len(queries), classes, device=queries.device).scatter_add_(1, labels[:, :k], weights[:, :k])
            for k in ks}


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def cpu_peak() -> Iterator[list[int]]:
    """Peak resident set above the start, sampled every millisecond by a thread (torch releases the GIL)."""
    start, peak, stop = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            peak[0] = max(peak[0], resident_bytes() - start)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def cuda_peak(device: torch.device) -> Iterator[list[int]]:
    """Peak of torch's allocator above the start."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start, peak = torch.cuda.memory_allocated(device), [0]
    yield peak
    torch.cuda.synchronize(device)
    peak[0] = torch.cuda.max_memory_allocated(device) - start


def measure(run: Callable[[], object], device: torch.device, rounds: int) -> tuple[float, int, object]:
    """Best wall seconds over rounds, the largest peak bytes, and the last output."""
    seconds, peak = float("inf"), 0
    for _ in range(rounds):
        with cuda_peak(device) if device.type == "cuda" else cpu_peak() as block_peak:
            start = time.perf_counter()
            out = run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = min(seconds, time.perf_counter() - start)
        peak = max(peak, block_peak[0])
    return seconds, peak, out


def setups(train: torch.Tensor, devices: list[str]) -> list[tuple[str, torch.device, torch.Tensor]]:
    """(name, device, train features): on cuda both resident on the GPU and streamed from the host."""
    rows = []
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            rows += [("cuda, train on GPU", device, train.to(device)), ("cuda, train on host", device, train)]
        else:
            rows.append((name, device, train))
    return rows


def time_chunked(device: torch.device, train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                 args: argparse.Namespace) -> None:
    """knn_accuracy at the full size (it keeps no [Q, C] scores, so the peak is the chunks' working memory)."""
    query_labels = torch.randint(args.classes, (len(queries),), generator=torch.Generator().manual_seed(2))
    if device.type == "cuda":  # cuBLAS and the allocator warm up outside the timing
        knn_accuracy(train[:1000], train_labels[:1000], queries[:100], query_labels[:100], args.classes,
                     device=device)
    seconds, peak, _ = measure(partial(knn_accuracy, train, train_labels, queries, query_labels, args.classes,
                                       device=device, **chunk_sizes(args)), device, args.rounds)
    imagenet = seconds * IMAGENET[0] * IMAGENET[1] / (len(train) * len(queries))
    print(f"  chunked: {seconds:.2f} s, peak {peak / 2**20:,.0f} MiB above the start; ImageNet "
          f"({IMAGENET[0]:,} x {IMAGENET[1]:,}) by N x Q: {imagenet / 60:.1f} min", flush=True)


def compare(device: torch.device, train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
            args: argparse.Namespace) -> None:
    """knn_predict against the brute force at the reference size: time, peak and agreement."""
    train, train_labels, queries = train[:args.ref_train], train_labels[:args.ref_train], queries[:args.ref_queries]
    ours_s, ours_peak, ours = measure(partial(knn_predict, train, train_labels, queries, args.classes, device=device,
                                              **chunk_sizes(args)), device, args.rounds)
    on_device = [t.to(device) for t in (train, train_labels, queries)]
    ref_s, ref_peak, ref = measure(partial(brute_force, *on_device, args.classes, KS), device, args.rounds)
    agree = all(torch.allclose(ours[k], ref[k], rtol=1e-4, atol=1e-5) for k in KS)
    same = min((ours[k].argmax(1) == ref[k].argmax(1)).float().mean().item() for k in KS)
    print(f"  {len(queries):,} x {len(train):,}: chunked {ours_s:.3f} s ({ours_peak / 2**20:,.0f} MiB), brute force "
          f"{ref_s:.3f} s ({ref_peak / 2**20:,.0f} MiB), chunked / brute force {ours_s / ref_s:.2f}; votes agree: "
          f"{'yes' if agree else 'NO'}, same top-1 class for {100 * same:.2f}% of queries", flush=True)


def chunk_sizes(args: argparse.Namespace) -> dict[str, int]:
    return dict(query_chunk=args.query_chunk, train_chunk=args.train_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ref-train", type=int, default=20_000, help="the brute-force comparison's train size")
    parser.add_argument("--ref-queries", type=int, default=2_000)
    parser.add_argument("--query-chunk", type=int, default=QUERY_CHUNK)
    parser.add_argument("--train-chunk", type=int, default=TRAIN_CHUNK)
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per setup; best kept")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--quick", action="store_true", help="20k x 2k, reference 5k x 500")
    args = parser.parse_args()
    if args.quick:
        args.train, args.queries, args.ref_train, args.ref_queries = 20_000, 2_000, 5_000, 500

    train, train_labels = features(args.train, args.dim, args.classes, seed=0)
    queries, _ = features(args.queries, args.dim, args.classes, seed=1)
    print(f"kNN (k in {KS}, T={TEMPERATURE}) of {args.queries:,} queries against {args.train:,} x {args.dim} train "
          f"features, {args.classes} classes; query_chunk {args.query_chunk}, train_chunk {args.train_chunk}")
    for name, device, stored in setups(train, args.devices):
        print(f"{name}: {hardware(device)}")
        time_chunked(device, stored, train_labels, queries, args)
        compare(device, stored, train_labels, queries, args)


if __name__ == "__main__":
    main()
