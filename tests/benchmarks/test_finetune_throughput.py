"""The fine-tuning benchmark compares equal computations: timm's ViT holds our weights and gives our logits."""
from types import SimpleNamespace

import torch

from benchmarks.finetune_throughput import build_pair, check_same_logits, loader_images_per_second, train_step
from benchmarks.synthetic import synthesize


def test_timm_reference_matches_ours_and_both_train():
    ours, reference = build_pair("tiny", img_size=64, depth=2, num_classes=10)
    images = torch.randn(2, 3, 64, 64)
    check_same_logits(ours, reference, images)
    targets = torch.softmax(torch.randn(2, 10), dim=-1)
    for model in (ours.train(), reference.train()):
        before = model.head.weight.detach().clone()
        train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), images, targets, amp=False)
        assert not torch.equal(model.head.weight, before)


def test_loader_rate_counts_the_timed_batches(tmp_path, monkeypatch):
    """3 batches of 4 are loaded; the first (the workers' start-up) is outside the timed 2.5 s: 8 images / 2.5 s."""
    synthesize(tmp_path, num_images=12, size=64, seed=0)
    clock = iter([10.0, 12.5])
    monkeypatch.setattr("benchmarks.finetune_throughput.time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert loader_images_per_second(tmp_path, img_size=32, batch=4, workers=0, batches=2) == 8 / 2.5
