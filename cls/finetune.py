"""`droppos-bench cls finetune`: end-to-end fine-tuning of a pre-trained ViT with the MAE / DropPos recipe."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.hooks import EMAHook
from mmengine.runner import set_random_seed
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torchvision.datasets import ImageFolder

from backbone import VisionTransformer, adamw_layer_decay, build_vit, load_pretrained, read_checkpoint
from backbone.checkpoint_load import CHECKPOINT_ARCH_KEYS, checkpoint_architecture
from engine import build_train_runner, peak_lr
from engine.errors import UserInputError
from engine.hooks import ModelMetaHook
from engine.images import eval_transform, image_folder
from engine.model import DeviceLoggedModel
from engine.runner import TrainSpec, Validation, train_from_config

from .data import build_mixup, train_transform
from .metric import TopKAccuracy

CONFIGS_DIR = Path(__file__).parent / "configs"
log = logging.getLogger("droppos_bench")
MODEL_PREFIX = "net."
HEAD_INIT_STD = 2e-5  # MAE: a near-zero head keeps the pre-trained features intact early in fine-tuning


class ClassifierModel(DeviceLoggedModel):
    """The Runner's view of a ViT classifier: Mixup/CutMix and the soft-target loss in training, logits in eval."""

    def __init__(self, net: VisionTransformer, mixup: nn.Module | None, smoothing: float, precision: str):
        super().__init__()
        self.net, self.mixup, self.bf16 = net, mixup, precision == "bf16"
        self.criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(smoothing)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, mode: str = "loss") -> Any:
        if mode == "loss":
            targets = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            return {"loss": self.criterion(self.net(images), targets)}
        if mode == "predict":  # training autocasts through the optimizer wrapper; evaluation here
            with torch.autocast(images.device.type, torch.bfloat16, enabled=self.bf16):
                logits = self.net(images)
            return [{"logits": logits.float(), "labels": labels}]
        raise ValueError(f"mode={mode!r}; expected 'loss' or 'predict'")


def build_classifier(cfg: Config, num_classes: int, fine_tuned: bool = False) -> VisionTransformer:
    """The ViT of `cfg.model` loaded from `cfg.ckpt`: a pre-trained encoder gets a fresh head (only head /
    fc_norm may be missing), a fine-tuned checkpoint (`fine_tuned`) must supply every key, its head included. What
    the encoder's architecture has beyond the recipe (DINOv2's registers and patch 14, CLIP's pre-norm and QuickGELU)
    comes from the checkpoint (`checkpoint_architecture`)."""
    ckpt = read_checkpoint(cfg.ckpt, cfg.ckpt_format, allow_pickle=cfg.allow_pickle) if cfg.ckpt else None
    kwargs = checkpoint_architecture(dict(cfg.model), ckpt)
    size = kwargs.pop("size")
    set_random_seed(cfg.seed)
    net = build_vit(size, num_classes=num_classes, **kwargs)
    if ckpt is not None:
        report = load_pretrained(net, ckpt, drop_head=not fine_tuned,
                                 allowed_missing=() if fine_tuned else ("head", "fc_norm"))
        log.info("%s", report)
    if not fine_tuned and num_classes:  # 0: the encoder alone (the frozen protocols)
        nn.init.trunc_normal_(net.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(net.head.bias)
    return net


def run_model_config(cfg: Config, net: VisionTransformer) -> dict[str, Any]:
    """The model config a run records: the recipe's, with the classes and what the checkpoint added to it."""
    taken = {key: net.config[key] for key in CHECKPOINT_ARCH_KEYS if key in net.config}
    return dict(cfg.model, num_classes=net.config["num_classes"], **taken)


def check_same_classes(train: ImageFolder, val: ImageFolder, root: str) -> None:
    """Labels are class-folder indices: a folder missing from one split would silently shift every later label."""
    if train.classes != val.classes:
        differ = sorted(set(train.classes) ^ set(val.classes))
        raise UserInputError(f"{root}: train and val have different class folders: {', '.join(differ[:5])}"
                             f"{' ...' if len(differ) > 5 else ''} ({len(differ)} in only one split)")


def build_finetune_runner(cfg: Config):
    """Data, model, layer-decayed AdamW and top-1/top-5 evaluation of a fine-tuning config, as a Runner."""
    img_size = cfg.model.img_size
    train = image_folder(cfg.data.root, "train", train_transform(img_size, cfg.aug), cfg.data.skip_invalid,
                         every_class=True)
    val = image_folder(cfg.data.root, "val", eval_transform(img_size), cfg.data.skip_invalid)
    check_same_classes(train, val, cfg.data.root)
    net = build_classifier(cfg, len(train.classes))
    if cfg.compile:
        net.compile()
    lr = peak_lr(cfg.optim.base_lr, cfg.effective_batch)
    optimizer = adamw_layer_decay(net, lr, cfg.optim.weight_decay, cfg.optim.layer_decay, net.num_layers,
                                  cfg.optim.betas)
    model = ClassifierModel(net, build_mixup(cfg.aug, len(train.classes)), cfg.aug.smoothing, cfg.precision)
    hooks = [EMAHook(momentum=1 - cfg.ema.decay, update_buffers=False)] if cfg.ema.enabled else []
    hooks.append(ModelMetaHook(MODEL_PREFIX, run_model_config(cfg, net)))
    runner = build_train_runner(TrainSpec.from_config(cfg, hooks), model, train, optimizer,
                                experiment_name=cfg.config_name, cfg=cfg,
                                validation=Validation(val, TopKAccuracy(), "top1"))
    runner.logger.info(f"fine-tuning ViT-{cfg.model.size} on {len(train)} images / {len(train.classes)} classes, "
                       f"effective batch {cfg.effective_batch}, peak lr {lr:.3g}, layer decay {cfg.optim.layer_decay}")
    return runner


def run_finetune(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Fine-tune per `config` with `key=value` overrides; returns the path of metrics.json."""
    return train_from_config(build_finetune_runner, CONFIGS_DIR, config, overrides)
