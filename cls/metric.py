"""Top-1 / top-5 accuracy for mmengine's ValLoop, counted on the device and summed over processes once."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.dist import all_reduce
from mmengine.evaluator import BaseMetric


class TopKAccuracy(BaseMetric):
    """Accuracy (%) of the logits the model returns in 'predict' mode: [{'logits': (B, C), 'labels': (B,)}]."""

    def __init__(self, topk: Sequence[int] = (1, 5)):
        super().__init__()
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for output in data_samples:
            logits, labels = output["logits"], output["labels"]
            k = min(max(self.topk), logits.shape[-1])
            hits = logits.topk(k, dim=-1).indices == labels.unsqueeze(-1)
            counts = [hits[:, :min(top, k)].any(-1).sum() for top in self.topk]
            # the batch size made on the device: torch.tensor(n, device=...) would be a blocking copy per batch
            self.results.append(torch.stack([*counts, labels.new_full((), len(labels), dtype=torch.long)]))

    def evaluate(self, size: int) -> dict[str, float]:
        """Sum the per-batch counts (the validation sampler does not pad ranks, so nothing is counted twice)."""
        totals = torch.stack(self.results).sum(0).double() if self.results else torch.zeros(len(self.topk) + 1)
        all_reduce(totals)
        self.results.clear()
        return self.compute_metrics(totals)

    def compute_metrics(self, results: torch.Tensor) -> dict[str, float]:
        *correct, total = results.tolist()
        return {f"top{top}": 100.0 * hits / max(total, 1) for top, hits in zip(self.topk, correct, strict=True)}
