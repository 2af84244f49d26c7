"""Weighted k-NN classification on frozen features (DINO's protocol), chunked so that no train x query matrix exists.

Features are L2-normalised here; a query's neighbours are the k train features of highest cosine similarity, each
voting for its label with weight exp(similarity / temperature); classes are ranked by their summed votes.

Memory: one block of query_chunk x train_chunk similarities (float32) and one train chunk on the device, whatever N
and Q are: the chunk's own top-max(ks) is merged with the running one (query_chunk x 2 max(ks)). Train features may
stay on the CPU (a float16 numpy memmap through torch.from_numpy, say): each train chunk is moved to `device` and
cast there, once per query chunk; on a GPU with memory to spare, put them there (ImageNet's 1.28M x 768 in float16
is 2 GB), or raise query_chunk, so that they do not cross the bus Q / query_chunk times.

Ties: among equal similarities torch.topk picks the neighbours (its order is unspecified; with real-valued features
exact ties do not occur); among classes with equal votes (classes with no votes, in practice) the lower class index
ranks first. Top-5 with k < 5 neighbours counts the first k ranked classes only, as DINO's eval_knn does (min(5, k)):
the classes after them have no votes.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07  # DINO's
QUERY_CHUNK = 1024
TRAIN_CHUNK = 65536


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                ks: Sequence[int] = KS, temperature: float = TEMPERATURE, query_chunk: int = QUERY_CHUNK,
                train_chunk: int = TRAIN_CHUNK, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> dict[int, torch.Tensor]:
    """Vote scores [Q, num_classes] per k, on `device` (default: the queries' device); matmuls in `dtype`."""
    scores = {k: [] for k in ks}
    for _, votes in chunk_votes(train_features, train_labels, queries, num_classes, ks, temperature, query_chunk,
                                train_chunk, compute_device(device, queries), dtype):
        for k, v in votes.items():
            scores[k].append(v)
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, ks: Sequence[int] = KS,
                 temperature: float = TEMPERATURE, query_chunk: int = QUERY_CHUNK, train_chunk: int = TRAIN_CHUNK,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 progress: str | None = None) -> dict[int, dict[str, float]]:
    """{k: {'top1': %, 'top5': %}}; 'top5' only where num_classes >= 5. Hits are counted on the device per query
    chunk and read once at the end, so the [Q, num_classes] scores are never kept. `progress`: the title of a bar
    over the query chunks (none without)."""
    if len(query_labels) != len(queries):
        raise ValueError(f"{len(query_labels)} query labels for {len(queries)} queries")
    tops = (1, 5) if num_classes >= 5 else (1,)
    device = compute_device(device, queries)
    query_labels = query_labels.to(device)
    hits = {k: [] for k in ks}
    for start, votes in chunk_votes(train_features, train_labels, queries, num_classes, ks, temperature,
                                    query_chunk, train_chunk, device, dtype, progress):
        for k, v in votes.items():
            hits[k].append(topk_hits(v, query_labels[start:start + len(v)], tuple(min(top, k) for top in tops)))
    counts = {k: torch.stack(h).sum(0).tolist() for k, h in hits.items()}
    return {k: {f"top{top}": 100.0 * c / len(queries) for top, c in zip(tops, counts[k], strict=True)} for k in ks}


def compute_device(device: torch.device | str | None, queries: torch.Tensor) -> torch.device:
    """`device`, or the queries' device when None."""
    return torch.device(device) if device is not None else queries.device


def topk_hits(votes: torch.Tensor, labels: torch.Tensor, tops: Sequence[int]) -> torch.Tensor:
    """Queries whose label is among the `top` best-voted classes, for each top; ties go to the lower class."""
    ranked = votes.argsort(dim=1, descending=True, stable=True)[:, :max(tops)]
    found = ranked == labels.unsqueeze(1)
    return torch.stack([found[:, :top].any(1).sum() for top in tops])


def chunk_votes(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                ks: Sequence[int], temperature: float, query_chunk: int, train_chunk: int, device: torch.device,
                dtype: torch.dtype, progress: str | None = None) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
    """(first query, vote scores per k) for one query chunk after another: the neighbours for max(ks) are found
    once, and each k scores its prefix of them. `progress`: a bar's title (none without)."""
    check_inputs(train_features, train_labels, queries, num_classes, ks, query_chunk, train_chunk)
    labels = train_labels.to(device, torch.long)
    starts = range(0, len(queries), query_chunk)
    for start in tqdm(starts, desc=progress, unit="chunk", disable=progress is None):
        chunk = normalized(queries[start:start + query_chunk], device, dtype)
        sims, index = nearest(train_features, chunk, max(ks), train_chunk)
        yield start, {k: votes(sims[:, :k], labels[index[:, :k]], num_classes, temperature) for k in ks}


def nearest(train_features: torch.Tensor, queries: torch.Tensor, k: int,
            train_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest cosine similarities (float32, descending) of each normalised query and their train indices,
    merging each train chunk's top-k into a running one."""
    best = torch.full((len(queries), k), -torch.inf, device=queries.device)
    index = torch.zeros((len(queries), k), dtype=torch.long, device=queries.device)
    for start in range(0, len(train_features), train_chunk):
        train = normalized(train_features[start:start + train_chunk], queries.device, queries.dtype)
        top, picked = (queries @ train.T).float().topk(min(k, len(train)), dim=1)
        best, merged = torch.cat([best, top], dim=1).topk(k, dim=1)
        index = torch.cat([index, picked + start], dim=1).gather(1, merged)
    return best, index


def normalized(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows moved in their own dtype, then cast and L2-normalised: a blocking .to(device, dtype) would cast on the
    CPU and move float16 rows as float32, twice the bytes."""
    return F.normalize(x.to(device).to(dtype), dim=1)


def votes(sims: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """Summed exp(similarity / temperature) per class of the neighbours' labels: [Q, num_classes]."""
    weights = (sims / temperature).exp()
    return torch.zeros(len(sims), num_classes, device=sims.device).scatter_add_(1, labels, weights)


def check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                 ks: Sequence[int], query_chunk: int, train_chunk: int) -> None:
    """Shapes and sizes that would otherwise fail deep inside topk or scatter (a device-side assert on cuda), or
    give silently wrong votes. Reads the labels' range once, before any chunk."""
    n = len(train_features)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={tuple(ks)}: need at least one k, each >= 1")
    if max(ks) > n:
        raise ValueError(f"k={max(ks)} is more than the N={n} train features")
    if not len(queries):
        raise ValueError("no queries to classify")
    if len(train_labels) != n:
        raise ValueError(f"{len(train_labels)} train labels for N={n} train features")
    if train_features.shape[1:] != queries.shape[1:]:
        raise ValueError(f"train features of shape {tuple(train_features.shape)} against queries of shape "
                         f"{tuple(queries.shape)}: the feature sizes differ")
    if not 0 <= int(train_labels.min()) <= int(train_labels.max()) < num_classes:
        raise ValueError(f"train labels span {int(train_labels.min())}..{int(train_labels.max())}; "
                         f"expected 0..{num_classes - 1} for num_classes={num_classes}")
    if query_chunk < 1 or train_chunk < 1:
        raise ValueError(f"query_chunk={query_chunk}, train_chunk={train_chunk}: both must be >= 1")
