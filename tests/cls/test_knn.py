"""Chunked weighted k-NN (DINO's protocol) against a brute-force reference on the full similarity matrix."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cls.knn import knn_accuracy, knn_predict, nearest

TEMPERATURE = 0.07
KS = (1, 4, 20, 157)  # 157 = N: every train feature is a neighbour


def random_data(n=157, q=43, dim=16, classes=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=gen), torch.randint(classes, (n,), generator=gen),
            torch.randn(q, dim, generator=gen), torch.randint(classes, (q,), generator=gen))


def clusters(per_class=30, queries_per_class=10, classes=6, dim=32, seed=0):
    """Points tightly around one random centre per class."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen)
    train_labels = torch.arange(classes).repeat_interleave(per_class)
    query_labels = torch.arange(classes).repeat_interleave(queries_per_class)
    train = centres[train_labels] + 0.05 * torch.randn(len(train_labels), dim, generator=gen)
    queries = centres[query_labels] + 0.05 * torch.randn(len(query_labels), dim, generator=gen)
    return train, train_labels, queries, query_labels


def brute_force(train, train_labels, queries, classes, ks):
    """The whole Q x N cosine matrix, its top-max(ks), one-hot labels weighted by exp(sim / T) summed per k."""
    sims = F.normalize(queries, dim=1) @ F.normalize(train, dim=1).T
    top, index = sims.topk(max(ks), dim=1)
    one_hot = F.one_hot(train_labels[index], classes).float()
    weights = (top / TEMPERATURE).exp()
    return index, {k: (one_hot[:, :k] * weights[:, :k, None]).sum(1) for k in ks}


def reference_accuracy(votes, labels, top, k):
    """% of queries whose label ranks within `top` (within k where k < top, DINO's min(5, k)): classes with more votes,
    or as many and a lower index, go before it."""
    top = min(top, k)
    hits = 0
    for row, label in zip(votes.tolist(), labels.tolist(), strict=True):
        rank = sum(v > row[label] or (v == row[label] and c < label) for c, v in enumerate(row))
        hits += rank < top
    return 100.0 * hits / len(labels)


CHUNKS = [(1, 1), (5, 13), (43, 157), (7, 40), (1000, 1000)]  # 13 and 40 divide neither N=157 nor Q=43


@pytest.mark.parametrize(("query_chunk", "train_chunk"), CHUNKS)
def test_chunked_knn_equals_the_brute_force_reference(query_chunk, train_chunk):
    train, train_labels, queries, query_labels = random_data()
    ref_index, ref_votes = brute_force(train, train_labels, queries, 7, KS)

    _, index = nearest(train, F.normalize(queries, dim=1), max(KS), train_chunk)
    for k in KS:
        assert torch.equal(index[:, :k].sort(1).values, ref_index[:, :k].sort(1).values), f"neighbours of k={k}"

    votes = knn_predict(train, train_labels, queries, 7, ks=KS, query_chunk=query_chunk, train_chunk=train_chunk)
    accuracy = knn_accuracy(train, train_labels, queries, query_labels, 7, ks=KS, query_chunk=query_chunk,
                            train_chunk=train_chunk)
    assert set(votes) == set(accuracy) == set(KS)
    for k in KS:
        torch.testing.assert_close(votes[k], ref_votes[k], rtol=1e-5, atol=1e-6)
        assert accuracy[k] == pytest.approx({f"top{t}": reference_accuracy(ref_votes[k], query_labels, t, k)
                                             for t in (1, 5)})
    assert accuracy[157]["top1"] == reference_accuracy(ref_votes[157], query_labels, 1, 157)  # k = N: every vote


def test_the_accuracy_is_not_trivial_on_random_data():
    """Guards the comparison above: random labels give accuracies well inside (0, 100)."""
    train, train_labels, queries, query_labels = random_data()
    accuracy = knn_accuracy(train, train_labels, queries, query_labels, 7, ks=KS)
    assert all(0 < accuracy[k]["top1"] < 60 and accuracy[k]["top1"] < accuracy[k]["top5"] < 100 for k in KS[1:])
    assert accuracy[1]["top5"] == accuracy[1]["top1"]  # one neighbour: one class with a vote (DINO's min(5, k))


def test_separated_clusters_score_100_percent():
    train, train_labels, queries, query_labels = clusters()
    accuracy = knn_accuracy(train, train_labels, queries, query_labels, 6, ks=(1, 10, 20), train_chunk=17)
    assert accuracy == {k: {"top1": 100.0, "top5": 100.0} for k in (1, 10, 20)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_float16_memmapped_train_features_predict_like_float32(tmp_path, dtype):
    """Train features as a float16 numpy memmap on the CPU, the matmuls in `dtype`: the same predictions."""
    train, train_labels, queries, _ = clusters(classes=8)
    memmap = np.memmap(tmp_path / "train.f16", dtype=np.float16, mode="w+", shape=tuple(train.shape))
    memmap[:] = train.numpy()
    stored = torch.from_numpy(memmap)
    assert stored.dtype == torch.float16
    ks = (1, 10, 30)
    want = knn_predict(train, train_labels, queries, 8, ks=ks, query_chunk=7, train_chunk=50)
    got = knn_predict(stored, train_labels, queries, 8, ks=ks, query_chunk=7, train_chunk=50, dtype=dtype)
    for k in ks:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k].argmax(1), want[k].argmax(1))
        torch.testing.assert_close(got[k], want[k], rtol=0.05, atol=1e-3)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(ks=(5, 158)), "k=158 is more than the N=157"),
    (dict(ks=()), r"ks=\(\)"),
    (dict(ks=(0, 5)), r"ks=\(0, 5\)"),
    (dict(query_chunk=0), "query_chunk=0"),
    (dict(num_classes=5), "train labels span 0..6; expected 0..4 for num_classes=5"),
])
def test_bad_arguments_are_named(kwargs, message):
    train, train_labels, queries, query_labels = random_data()
    kwargs = dict(num_classes=7, ks=(3,)) | kwargs
    with pytest.raises(ValueError, match=message):
        knn_accuracy(train, train_labels, queries, query_labels, **kwargs)


def test_mismatched_shapes_are_named():
    train, train_labels, queries, query_labels = random_data()
    with pytest.raises(ValueError, match="156 train labels for N=157"):
        knn_predict(train, train_labels[1:], queries, 7, ks=(3,))
    with pytest.raises(ValueError, match="feature sizes differ"):
        knn_predict(train, train_labels, queries[:, 1:], 7, ks=(3,))
    with pytest.raises(ValueError, match="no queries"):
        knn_predict(train, train_labels, queries[:0], 7, ks=(3,))
    with pytest.raises(ValueError, match="42 query labels for 43 queries"):
        knn_accuracy(train, train_labels, queries, query_labels[1:], 7, ks=(3,))


def test_a_titled_run_shows_a_bar_over_the_query_chunks(capfd):
    train, train_labels, queries, query_labels = random_data()
    quiet = knn_accuracy(train, train_labels, queries, query_labels, 7, ks=KS, query_chunk=10)
    assert "k-NN test" not in capfd.readouterr().err
    shown = knn_accuracy(train, train_labels, queries, query_labels, 7, ks=KS, query_chunk=10, progress="k-NN test")
    err = capfd.readouterr().err
    assert "k-NN test" in err and "5/5" in err and shown == quiet  # 43 queries in chunks of 10
