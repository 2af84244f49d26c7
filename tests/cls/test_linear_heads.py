"""DINOv2-style grid of linear heads on cached features: the batched training equals plain per-head training, the
choice sees only the held-out slice of train, and the same seed gives the same result."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cls.linear_heads import batch_order, fit_linear_grid, holdout_split, init_heads, train_heads

LRS = (0.05, 0.5, 1.5)


def clusters(n, dim, classes, noise, seed):
    """Labels cycling over the classes; features one random centre per class plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=gen)
    return centres[labels] + noise * torch.randn(n, dim, generator=gen), labels


def grid_data(n=120, classes=6, noise=0.3, seed=0):
    """Variants of different widths: 'cls' [N, 8], 'cls+avg' [N, 16] (with an uninformative half), 'noise' [N, 4];
    train first, val after it."""
    features, labels = clusters(2 * n, 8, classes, noise, seed)
    noise_features = torch.randn(2 * n, 8, generator=torch.Generator().manual_seed(seed + 1))
    variants = {"cls": features, "cls+avg": torch.cat([features, noise_features], 1), "noise": noise_features[:, :4]}
    return ({k: v[:n] for k, v in variants.items()}, labels[:n], {k: v[n:] for k, v in variants.items()}, labels[n:])


def reference_head(features, labels, order, batch_size, lr, weight, bias, weight_decay):
    """One nn.Linear with torch.optim.SGD(momentum=0.9) and CosineAnnealingLR over all steps, on the same batches."""
    head = nn.Linear(features.shape[1], weight.shape[1])
    with torch.no_grad():
        head.weight.copy_(weight.T)
        head.bias.copy_(bias)
    batches = [epoch[i:i + batch_size] for epoch in order for i in range(0, len(epoch), batch_size)]
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(batches))
    for rows in batches:
        loss = F.cross_entropy(head(features[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.weight.detach().T, head.bias.detach()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_heads_trained_together_equal_each_head_trained_alone(weight_decay):
    features, labels = clusters(50, 12, 5, noise=1.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    order = batch_order(torch.arange(3, 50), epochs=3, gen=gen)  # 47 rows, batches of 16: 3 per epoch, 9 steps
    weight, bias = init_heads(len(LRS), 12, 5, gen)
    bias += 0.1 * torch.randn(bias.shape, generator=gen)  # a non-zero start, so the bias update is checked too
    got_weight, got_bias = train_heads(features, labels, order, 16, torch.tensor(LRS), weight, bias, weight_decay)
    for h, lr in enumerate(LRS):
        want_weight, want_bias = reference_head(features, labels, order, 16, lr, weight[h], bias[h], weight_decay)
        assert not torch.allclose(want_weight, weight[h], atol=1e-3), "the head should have moved"
        torch.testing.assert_close(got_weight[h], want_weight, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_bias[h], want_bias, rtol=1e-5, atol=1e-5)


def test_init_is_dinov2s():
    weight, bias = init_heads(4, 300, 50, torch.Generator().manual_seed(0))
    assert weight.shape == (4, 300, 50) and bias.shape == (4, 50) and not bias.any()
    assert weight.std().item() == pytest.approx(0.01, rel=0.02) and abs(weight.mean().item()) < 1e-4


def test_the_held_out_slice_is_disjoint_and_training_never_reads_it():
    train_rows, held_rows = holdout_split(103, 0.1, torch.Generator().manual_seed(0))
    assert len(held_rows) == 10 and len(train_rows) == 93
    assert sorted(train_rows.tolist() + held_rows.tolist()) == list(range(103))
    order = batch_order(train_rows, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(epoch.sort().values, train_rows) for epoch in order)
    assert not torch.equal(order[0], order[1]), "each epoch draws its own permutation"

    train, train_labels, val, val_labels = grid_data()
    result = fit_linear_grid(train, train_labels, val, val_labels, 6, LRS, epochs=2, batch_size=16, seed=3)
    _, held = holdout_split(len(train_labels), 0.1, torch.Generator().manual_seed(3))  # fit_linear_grid's first draw
    scrambled = {k: v.clone() for k, v in train.items()}
    for features in scrambled.values():
        features[held] = 100 * torch.randn(len(held), features.shape[1])
    changed = fit_linear_grid(scrambled, train_labels, val, val_labels, 6, LRS, epochs=2, batch_size=16, seed=3)
    assert [h["val_top1"] for h in changed.heads] == [h["val_top1"] for h in result.heads]  # same trained heads
    assert [h["holdout_top1"] for h in changed.heads] != [h["holdout_top1"] for h in result.heads]


def test_val_labels_never_choose_the_head():
    train, train_labels, val, val_labels = grid_data(noise=1.5)
    result = fit_linear_grid(train, train_labels, val, val_labels, 6, LRS, epochs=2, batch_size=16)
    shuffled = val_labels[torch.randperm(len(val_labels), generator=torch.Generator().manual_seed(0))]
    other = fit_linear_grid(train, train_labels, val, shuffled, 6, LRS, epochs=2, batch_size=16)
    assert (other.variant, other.lr) == (result.variant, result.lr)
    assert [h["holdout_top1"] for h in other.heads] == [h["holdout_top1"] for h in result.heads]
    assert [h["val_top1"] for h in other.heads] != [h["val_top1"] for h in result.heads]


def test_same_seed_same_result_other_seed_another():
    train, train_labels, val, val_labels = grid_data(noise=1.5)
    runs = [fit_linear_grid(train, train_labels, val, val_labels, 6, LRS, epochs=2, batch_size=16, seed=seed)
            for seed in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0].heads != runs[2].heads


def test_separable_features_reach_100_percent_with_a_sensible_lr():
    """float16 features (as a memmapped cache holds them), three widths, a tiny lr that barely moves the heads."""
    train, train_labels, val, val_labels = grid_data()
    train = {k: v.half() for k, v in train.items()}
    lrs = (1e-5, 0.1, 1.0)
    result = fit_linear_grid(train, train_labels, val, val_labels, 6, lrs, epochs=5, batch_size=16)
    assert (result.variant, result.val_top1, result.val_top5) == ("cls", 100.0, 100.0)
    assert (result.train_rows, result.holdout_rows) == (108, 12)
    table = {(h["variant"], h["lr"]): h for h in result.heads}
    assert list(table) == [(v, lr) for v in ("cls", "cls+avg", "noise") for lr in lrs]  # grid order
    assert table["cls", 1e-5]["holdout_top1"] < 70 and table["cls+avg", 0.1]["val_top1"] > 85
    # lr 0.1 and 1.0 of 'cls' (and lr 0.1 of 'cls+avg') tie at 100% held out: the first in grid order wins
    assert table["cls", 1.0]["holdout_top1"] == table["cls+avg", 0.1]["holdout_top1"] == 100.0
    assert result.lr == 0.1
    assert max(table["noise", lr]["val_top1"] for lr in lrs) < 50  # chance is 16.7


def test_fewer_than_5_classes_have_no_top5():
    features, labels = clusters(40, 4, 3, noise=0.1, seed=0)
    result = fit_linear_grid({"cls": features[:30]}, labels[:30], {"cls": features[30:]}, labels[30:], 3, (0.5,),
                             epochs=3, batch_size=8, holdout=0.2)
    assert result.val_top5 is None and result.val_top1 == 100.0 and math.isclose(result.holdout_top1, 100.0)


@pytest.mark.parametrize(("change", "message"), [
    (dict(lrs=()), r"lrs=\[\]"),
    (dict(lrs=(0.1, -1.0)), r"lrs=\[0.1, -1.0\]"),
    (dict(train="short"), r"variant 'cls\+avg': train features of shape \(119, 16\) for 120 labels"),
    (dict(val="wide"), r"variant 'noise': val features of shape \(120, 5\)"),
    (dict(val="missing"), r"val variants \['cls', 'cls\+avg'\] differ"),
    (dict(holdout=1.0), "holdout=1.0 of 120 train rows holds out 120"),
    (dict(holdout=0.001), "holdout=0.001 of 120 train rows holds out 0"),
    (dict(num_classes=5), "train labels span 0..5; expected 0..4 for num_classes=5"),
    (dict(epochs=0), "epochs=0"),
])
def test_bad_inputs_are_named(change, message):
    train, train_labels, val, val_labels = grid_data()
    if change.pop("train", None):
        train["cls+avg"] = train["cls+avg"][1:]
    match change.pop("val", None):
        case "wide":
            val["noise"] = torch.cat([val["noise"], val["noise"][:, :1]], 1)
        case "missing":
            del val["noise"]
    kwargs = dict(num_classes=6, lrs=LRS, epochs=1, batch_size=16) | change
    with pytest.raises(ValueError, match=message):
        fit_linear_grid(train, train_labels, val, val_labels, **kwargs)
