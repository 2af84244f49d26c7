"""The frozen protocols' feature cache and commands: the rows are the encoder's features, computed once per checkpoint
and reused, recomputed when the checkpoint changes, continued after a killed extraction."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backbone import build_vit, export_checkpoint
from benchmarks.cli import main
from benchmarks.synthetic.ramps import write_direction_task
from cls import features, frozen
from cls.finetune import CONFIGS_DIR
from engine import load_config
from engine.errors import UserInputError
from engine.images import eval_transform, image_folder

DIRECTIONS_PER_CLASS, VAL_PER_CLASS = 8, 4


@pytest.fixture(scope="module")
def ramps(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ramps")
    write_direction_task(root, DIRECTIONS_PER_CLASS, VAL_PER_CLASS, seed=0)
    return root


def tiny_encoder(path: Path, seed: int, depth: int = 2) -> Path:
    torch.manual_seed(seed)
    export_checkpoint(build_vit("tiny", img_size=64, depth=depth), path)
    return path


def run(command: str, config: str, **overrides) -> dict:
    assert main(["cls", command, config, *(f"{key}={value}" for key, value in overrides.items())]) == 0
    return json.loads((Path(overrides["work_dir"]) / "metrics.json").read_text())


def test_rows_are_the_encoders_final_norm_features_in_their_columns(ramps, tmp_path):
    torch.manual_seed(0)
    net = build_vit("tiny", img_size=64, depth=4).eval()
    dataset = image_folder(ramps, "val", eval_transform(64))
    cached = features.extract(net, dataset, tmp_path / "cache", batch_size=5, num_workers=0, last_layers=4,
                              device=torch.device("cpu"), bf16=False, flush_every=2)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        x, grid = net.embed(images)
        last, kept = net.run_blocks(x, grid, keep=(0, 1, 2))
        tokens = net.norm(last)
        expected = {"cls": tokens[:, 0], "avg": tokens[:, 1:].mean(dim=1),
                    "cls4": torch.cat([net.norm(kept[i])[:, 0] for i in (0, 1, 2)] + [tokens[:, 0]], dim=1)}
    # DINOv2's linear input (create_linear_input): the blocks' [CLS] from the earliest, then the mean patch token
    expected["cls+avg"] = torch.cat([expected["cls"], expected["avg"]], dim=1)
    expected["cls4+avg"] = torch.cat([expected["cls4"], expected["avg"]], dim=1)
    assert sorted(cached.columns) == sorted(features.FEATURES)
    for name, value in expected.items():
        torch.testing.assert_close(cached.feature(name).float(), value.half().float(), msg=name)
    assert cached.targets.tolist() == list(dataset.targets)
    reopened = features.open_cache(tmp_path / "cache")
    assert torch.equal(reopened.feature("cls4+avg"), cached.feature("cls4+avg"))


def test_a_killed_extraction_continues_from_its_last_flush(ramps, tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = build_vit("tiny", img_size=64, depth=2).eval()
    dataset = image_folder(ramps, "val", eval_transform(64))
    options = dict(batch_size=2, num_workers=0, last_layers=1, device=torch.device("cpu"), bf16=False, flush_every=3)
    whole = features.extract(net, dataset, tmp_path / "whole", **options)
    encoded = []
    real_encode = features.encode_rows

    def encode_then_die(model, images, last_layers):
        if len(encoded) == 7:  # killed in the 8th batch: 6 batches (12 rows) were flushed
            raise KeyboardInterrupt
        encoded.append(len(images))
        return real_encode(model, images, last_layers)

    monkeypatch.setattr(features, "encode_rows", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        features.extract(net, dataset, tmp_path / "killed", **options)
    assert features.open_cache(tmp_path / "killed") is None  # unfinished: never read as a cache
    assert json.loads((tmp_path / "killed" / features.PROGRESS).read_text()) == {"rows": 12}
    encoded.clear()
    monkeypatch.setattr(features, "encode_rows", lambda *args: encoded.append(len(args[1])) or real_encode(*args))
    resumed = features.extract(net, dataset, tmp_path / "killed", **options)
    assert sum(encoded) == len(dataset) - 12  # only the rows after the last flush
    assert np.array_equal(resumed.rows, whole.rows)


def test_the_cache_is_reused_across_protocols_and_recomputed_for_another_checkpoint_or_data(tmp_path, monkeypatch):
    ckpt = tiny_encoder(tmp_path / "encoder.safetensors", seed=0)
    data = tmp_path / "data"
    write_direction_task(data, DIRECTIONS_PER_CLASS, VAL_PER_CLASS, seed=0)
    common = dict(ckpt=ckpt, **{"data.root": data, "features.cache_dir": tmp_path / "cache"})
    knn = run("knn", "knn_tiny_ramps", work_dir=tmp_path / "knn", **common)
    assert set(knn["per_k"]) == {"1", "5", "10", "20"} and knn["last"]["k"] == 1
    assert knn["last"]["top1"] == knn["per_k"]["1"]["top1"]
    built = []
    real_build = frozen.build_classifier
    monkeypatch.setattr(frozen, "build_classifier", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = run("knn", "knn_tiny_ramps", work_dir=tmp_path / "knn2", **common)
    linear = run("linear", "linear_tiny_ramps", work_dir=tmp_path / "linear", **common)
    assert built == [] and again["per_k"] == knn["per_k"]  # the encoder never ran again
    assert linear["features"] == knn["features"]
    assert linear["chosen"]["feature"] in ("cls", "avg", "cls+avg")
    tiny_encoder(ckpt, seed=1)  # the same file name, other weights
    other = run("knn", "knn_tiny_ramps", work_dir=tmp_path / "knn3", **common)
    assert built == [1] and set(other["features"]).isdisjoint(knn["features"])
    shutil.rmtree(data)
    write_direction_task(data, DIRECTIONS_PER_CLASS, VAL_PER_CLASS, seed=1)  # the same file names, other images
    regenerated = run("knn", "knn_tiny_ramps", work_dir=tmp_path / "knn4", **common)
    assert built == [1, 1] and set(regenerated["features"]).isdisjoint(other["features"])


def test_bad_options_name_the_key(ramps, tmp_path):
    common = {"data.root": ramps, "features.cache_dir": tmp_path / "cache", "work_dir": tmp_path / "run"}
    with pytest.raises(UserInputError, match="knn.report_k=3 is not one of knn.ks"):
        frozen.run_knn("knn_tiny_ramps", {**common, "knn.report_k": 3})
    with pytest.raises(UserInputError, match="knn.feature='patch'"):
        frozen.run_knn("knn_tiny_ramps", {**common, "knn.feature": "patch"})
    with pytest.raises(UserInputError, match="linear.features=.*'cls8'"):
        frozen.run_linear("linear_tiny_ramps", {**common, "linear.features": ("cls8",)})
    with pytest.raises(UserInputError, match="features.last_layers=4; .* at most the encoder's 2 blocks"):
        frozen.run_knn("knn_tiny_ramps", {**common, "features.last_layers": 4})


@pytest.mark.parametrize(("meta", "fmt", "pooling"), [
    ({"pretrain": {"type": "DropPos"}}, "auto", "avg"),  # our own pre-training's export
    ({"source_format": "mae"}, "auto", "avg"),  # converted from a mean-pooled family
    ({"source_format": "dino"}, "auto", "token"),
    ({}, "auto", "token"),
    ({}, "mae", "avg"),  # named as a mean-pooled family's release
])
def test_knn_reads_the_feature_the_checkpoints_family_pools(tmp_path, meta, fmt, pooling):
    torch.manual_seed(0)
    path = tmp_path / ("encoder.safetensors" if fmt == "auto" else "model.pth")
    if fmt == "auto":
        export_checkpoint(build_vit("tiny", img_size=64, depth=2), path, meta=meta)
    else:
        torch.save({"model": build_vit("tiny", img_size=64, depth=2).state_dict()}, path)
    cfg = load_config("knn_tiny_ramps", {"ckpt": str(path), "ckpt_format": fmt}, configs_dir=CONFIGS_DIR)
    assert frozen.checkpoint_pooling(cfg) == pooling
    assert frozen.checkpoint_pooling(load_config("knn_tiny_ramps", configs_dir=CONFIGS_DIR)) == "token"


def test_a_training_runs_work_dir_stands_for_its_last_checkpoint(ramps, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = tiny_encoder(run_dir / "encoder.safetensors", seed=0)
    (run_dir / "last_checkpoint").write_text(str(ckpt))
    knn = run("knn", "knn_tiny_ramps", ckpt=run_dir, work_dir=tmp_path / "knn",
              **{"data.root": ramps, "features.cache_dir": tmp_path / "cache"})
    meta = json.loads((Path(knn["features"][0]) / features.META).read_text())
    assert meta["weights"] == features.file_digest(ckpt)
