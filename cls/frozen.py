"""`droppos-bench cls knn` and `cls linear`: the fast frozen-encoder protocols on cached features.

Both read the features of the train and val splits from the feature cache (cls/features.py), extracting them first
where no finished cache of this checkpoint, transform and split exists, then score on val:

- knn: DINO's weighted k-NN vote (cls/knn.py), every k of `knn.ks` in one pass;
- linear: DINOv2's grid of linear heads (cls/linear_heads.py) over learning rates and feature variants, trained
  together, the best chosen on a held-out slice of train; or, with `linear.head`, a released head scoring val
  (cls/released_head.py; its width is checked after val's extraction, whose cache the next run reuses).

Each writes work_dir/metrics.json with a "last" section (top1 / top5 of the reported k or the chosen head), as the
training commands do, so the harness reads all of them alike.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from torch.utils.tensorboard import SummaryWriter

from backbone import read_checkpoint
from backbone.checkpoint import last_run_checkpoint
from engine.errors import UserInputError
from engine.evaluation import eval_config
from engine.folder_index import folder_stamps
from engine.images import EVAL_CROP_RATIO, CheckedImageFolder, eval_transform, image_folder
from engine.runner import default_work_dir
from engine.safe_io import write_json_atomic

from .features import FEATURES, CachedFeatures, cache_key, extract, file_digest, open_cache
from .finetune import CONFIGS_DIR, build_classifier, check_same_classes
from .knn import knn_accuracy
from .linear_heads import fit_linear_grid
from .released_head import feature_for_width, read_linear_head, score_head

log = logging.getLogger("droppos_bench")
POOL_FEATURE = {"token": "cls", "avg": "avg"}
# families whose fine-tuning pools the mean patch token (MAE, BEiT, their kin, and our own pre-trainings): their
# [CLS] is never trained for an image-level objective
MEAN_POOLED = ("droppos", "mae", "beit", "beitv2", "data2vec", "simmim", "cae")


def split_datasets(cfg: Config, names: tuple[str, ...] = ("train", "val")) -> dict[str, CheckedImageFolder]:
    """Each split of `names` through the evaluation transform; train and val must have the same classes."""
    splits = {split: image_folder(cfg.data.root, split, eval_transform(cfg.model.img_size), cfg.data.skip_invalid,
                                  every_class=split == "train") for split in names}
    if len(splits) == 2:
        check_same_classes(splits["train"], splits["val"], cfg.data.root)
    return splits


def load_split_features(cfg: Config, splits: dict[str, CheckedImageFolder] | None = None) -> tuple[CachedFeatures, ...]:
    """The cached features of `cfg.ckpt` on each split (default: train and val), extracting what the cache lacks; the
    encoder is built only then, so a second protocol on the same checkpoint never runs it."""
    size = cfg.model.img_size
    splits = splits or split_datasets(cfg)
    weights = f"random init, seed {cfg.seed}"
    if cfg.ckpt:  # a training run's work dir stands for its last checkpoint, as everywhere
        weights = file_digest(last_run_checkpoint(cfg.ckpt) if Path(cfg.ckpt).is_dir() else cfg.ckpt)
    net = None
    cached = []
    for split, dataset in splits.items():
        describe = dict(checkpoint=str(cfg.ckpt), weights=weights, format=cfg.ckpt_format, model=dict(cfg.model),
                        root=str(dataset.root),
                        transform=f"resize {int(size / EVAL_CROP_RATIO)}, center crop {size}",
                        split=split, files=dataset.index.digest(), folders=folder_stamps(Path(dataset.root)),
                        last_layers=cfg.features.last_layers,
                        precision=cfg.precision)
        folder = Path(cfg.features.cache_dir) / f"{split}-{cache_key(**describe)}"
        features = open_cache(folder)
        if features is None:
            net = net or build_classifier(cfg, num_classes=0)
            features = extract(net, dataset, folder, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers,
                               last_layers=cfg.features.last_layers, device=_device(),
                               bf16=cfg.precision == "bf16", flush_every=cfg.features.flush_every, describe=describe)
        cached.append(features)
    return tuple(cached)


def checkpoint_pooling(cfg: Config) -> str:
    """"avg" for a checkpoint of a mean-pooled family (MEAN_POOLED: by its format, the format it was converted from,
    or our pre-training's record), "token" otherwise and for a random init."""
    if not cfg.ckpt:
        return "token"
    ckpt = read_checkpoint(cfg.ckpt, cfg.ckpt_format, allow_pickle=cfg.allow_pickle)
    family = ckpt.meta.get("source_format", ckpt.format)
    return "avg" if family in MEAN_POOLED or "pretrain" in ckpt.meta else "token"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _config(command: str, config: str | Path, overrides: dict[str, Any] | None) -> Config:
    cfg = eval_config(command, config, overrides, CONFIGS_DIR, checkpoint_kind=None)  # None: random init allowed
    if cfg.model.global_pool != "token":
        raise UserInputError(f"model.global_pool={cfg.model.global_pool!r}: the frozen protocols read the encoder's "
                             "final norm, built with global_pool='token'; choose [CLS] or mean patch features with "
                             "knn.feature / linear.features instead")
    return cfg


def _write_metrics(cfg: Config, last: dict[str, Any], scalars: dict[str, list[tuple[int, float]]],
                   **details: Any) -> Path:
    """metrics.json, and `scalars` (tag: (step, value) points; accuracy by k, or by learning rate) to TensorBoard."""
    work_dir = Path(default_work_dir(cfg))
    out = work_dir / "metrics.json"
    write_json_atomic(out, dict(checkpoint=str(cfg.ckpt), data=str(cfg.data.root), last=last, **details))
    with SummaryWriter(str(work_dir / "tensorboard")) as writer:
        for tag, values in scalars.items():
            for step, value in values:
                writer.add_scalar(tag, value, step)
    return out


def run_knn(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """k-NN top-1 / top-5 on val for every k of the config; "last" holds `knn.report_k`'s."""
    cfg = _config("cls knn", config, overrides)
    chosen = checkpoint_pooling(cfg) if cfg.knn.feature == "auto" else cfg.knn.feature
    feature = POOL_FEATURE.get(chosen, chosen)
    if feature not in ("cls", "avg"):
        raise UserInputError(f"knn.feature={cfg.knn.feature!r}; expected 'auto' (the checkpoint family's pooling), "
                             "'token' / 'cls' ([CLS]) or 'avg' (mean patch token)")
    log.info("k-NN on the %s feature%s", feature, " (the checkpoint family's)" if cfg.knn.feature == "auto" else "")
    if cfg.knn.report_k not in cfg.knn.ks:
        raise UserInputError(f"knn.report_k={cfg.knn.report_k} is not one of knn.ks={tuple(cfg.knn.ks)}")
    train, val = load_split_features(cfg)
    device = _device()
    # on a GPU the train features move there once (ImageNet's 1.28M x 768 float16: 2 GB), not once per query chunk
    bank = train.feature(feature).to(device) if device.type == "cuda" else train.feature(feature)
    per_k = knn_accuracy(bank, train.targets, val.feature(feature), val.targets, len(train.classes),
                         ks=tuple(cfg.knn.ks), temperature=cfg.knn.temperature, query_chunk=cfg.knn.query_chunk,
                         train_chunk=cfg.knn.train_chunk, device=device,
                         progress=f"k-NN: {len(val.labels)} val images x {len(train.labels)} train")
    for k, scores in per_k.items():
        log.info("k-NN k=%d: %s", k, ", ".join(f"{name} {value:.2f}" for name, value in scores.items()))
    scalars = {f"knn/{name} by k": [(k, scores[name]) for k, scores in per_k.items()]
               for name in per_k[cfg.knn.report_k]}
    return _write_metrics(cfg, dict(per_k[cfg.knn.report_k], k=cfg.knn.report_k), scalars, feature=feature,
                          per_k={str(k): v for k, v in per_k.items()}, temperature=cfg.knn.temperature,
                          features=[str(train.folder), str(val.folder)])


def run_linear(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """The grid of linear heads on cached features; "last" holds the chosen head's val top-1 / top-5. With
    `linear.head` (a released head's file) nothing is trained: that head scores val."""
    cfg = _config("cls linear", config, overrides)
    unknown = [name for name in cfg.linear.features if name not in FEATURES]
    if unknown or not cfg.linear.features:
        raise UserInputError(f"linear.features={tuple(cfg.linear.features)}; expected some of {FEATURES}")
    if cfg.linear.head:
        return score_released_head(cfg)
    train, val = load_split_features(cfg)
    names = [name for name in cfg.linear.features if name in train.columns]
    if skipped := [name for name in cfg.linear.features if name not in train.columns]:
        log.info("linear: %s need features.last_layers=4; trained without them", ", ".join(skipped))
    lrs = [lr * cfg.linear.batch_size / 256 for lr in cfg.linear.base_lrs]  # DINOv2 scales its grid by batch / 256
    device = _device()
    result = fit_linear_grid(train.features_on(names, device), train.targets, val.features_on(names, device),
                             val.targets, len(train.classes), lrs, cfg.linear.epochs, cfg.linear.batch_size,
                             holdout=cfg.linear.holdout, weight_decay=cfg.linear.weight_decay, seed=cfg.seed,
                             device=device)
    log.info("linear: chose %s at lr %.3g (held-out top-1 %.2f): val top-1 %.2f", result.variant, result.lr,
             result.holdout_top1, result.val_top1)
    last = {"top1": result.val_top1, **({"top5": result.val_top5} if result.val_top5 is not None else {})}
    scalars = {f"linear/{split} top1 by lr index/{name}": list(enumerate(
        head[f"{split}_top1"] for head in result.heads if head["variant"] == name))
        for name in names for split in ("holdout", "val")}
    return _write_metrics(cfg, last, scalars, chosen={"feature": result.variant, "lr": result.lr,
                                             "holdout_top1": result.holdout_top1},
                          train_rows=result.train_rows, holdout_rows=result.holdout_rows, heads=result.heads,
                          features=[str(train.folder), str(val.folder)])


def score_released_head(cfg: Config) -> Path:
    """`linear.head`'s val top-1 / top-5 on the cached feature as wide as its input (val only: nothing is trained)."""
    weight, bias = read_linear_head(cfg.linear.head)
    splits = split_datasets(cfg, ("val",))
    if len(weight) != len(splits["val"].classes):  # before the extraction
        raise UserInputError(f"linear head {cfg.linear.head} has {len(weight)} classes; {cfg.data.root}/val has "
                             f"{len(splits['val'].classes)}")
    (val,) = load_split_features(cfg, splits)
    candidates = {name: val.columns[name] for name in cfg.linear.features if name in val.columns}
    feature = feature_for_width(weight.shape[1], candidates, cfg.linear.head)
    device = _device()
    last = score_head(val.features_on([feature], device)[feature], val.targets, weight, bias, cfg.linear.batch_size)
    log.info("linear: released head %s on %s: val %s", cfg.linear.head, feature,
             ", ".join(f"{name} {value:.2f}" for name, value in last.items()))
    return _write_metrics(cfg, last, {}, head=str(cfg.linear.head), feature=feature, features=[str(val.folder)])
