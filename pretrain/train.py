"""`droppos-bench pretrain`: DropPos, MAE, MAE+ or AdPE pre-training on mmengine's Runner, then the encoder export."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.runner import Runner, set_random_seed
from timm.optim import param_groups_weight_decay

from backbone import export_checkpoint
from engine import build_train_runner, peak_lr
from engine.hooks import ModelMetaHook
from engine.images import CheckedImageFolder, decode_tensor, image_folder, normalize_on_device, pretrain_transform
from engine.model import DeviceLoggedModel, unwrap_model
from engine.runner import TrainSpec, trained_runner

from .adpe import AdPE, adpe_param_groups, project_after_every_step
from .build import build_pretrain_model
from .data import MultiCrop
from .droppos import DropPos
from .mae import MAE
from .mae_plus import MAEPlus
from .smoothing import position_smoothing, sigma_at

CONFIGS_DIR = Path(__file__).parent / "configs"
MODEL_PREFIX = "net."


class PretrainModel(DeviceLoggedModel):
    """The Runner's view of DropPos / MAE / MAE+ / AdPE: batches in, losses and metrics (kept on the device) out."""

    def __init__(self, net: DropPos | MAE | MAEPlus):
        super().__init__()
        self.net = net
        self.smoothing: torch.Tensor | None = None  # DropPos soft-target table, set by SigmaHook every iteration

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                mode: str = "loss") -> dict[str, torch.Tensor]:
        if mode != "loss":
            raise ValueError(f"pre-training models only compute losses (mode='loss'), not mode={mode!r}")
        images = normalize_on_device(images)  # the loader hands over uint8
        if isinstance(self.net, DropPos):
            return self.net(images, self.smoothing)
        return self.net(images)


class SigmaHook(Hook):
    """Position smoothing schedule: sets the soft-target table before each iteration and logs sigma."""

    priority = "NORMAL"

    def __init__(self, mode: str, sigma0: float, sigma_t: float, img_size: int):
        self.mode, self.sigma0, self.sigma_t, self.img_size = mode, sigma0, sigma_t, img_size
        self.sigma: float | None = None

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        model = unwrap_model(runner.model)
        sigma = sigma_at(self.mode, self.sigma0, self.sigma_t, runner.iter, len(runner.train_dataloader),
                         runner.max_iters)
        if sigma != self.sigma or model.smoothing is None:
            device = next(model.parameters()).device
            model.smoothing = position_smoothing(self.mode, model.net.grid_size, self.img_size, sigma, device)
            self.sigma = sigma
        runner.message_hub.update_scalar("train/sigma", sigma)


def build_pretrain_runner(cfg: Config, launcher: str | None = None):
    """Model, data, optimizer and hooks of a pre-training config, assembled into a Runner."""
    model_cfg = dict(cfg.model)
    set_random_seed(cfg.seed)  # the initial weights too, not only what the Runner does after it is built
    net = build_pretrain_model(model_cfg)
    if cfg.compile:
        net.compile()
    img_size = model_cfg["img_size"]
    dataset = pretrain_dataset(cfg)
    lr = peak_lr(cfg.optim.base_lr, cfg.effective_batch)
    optimizer = torch.optim.AdamW(optimizer_groups(net, cfg), lr=lr, betas=tuple(cfg.optim.betas),
                                  fused=torch.cuda.is_available())
    if isinstance(net, AdPE):
        project_after_every_step(optimizer, net)
    hooks: list[Hook] = [ModelMetaHook(MODEL_PREFIX, model_cfg)]
    if isinstance(net, DropPos):
        smoothing = cfg.smoothing
        hooks.append(SigmaHook(smoothing.mode, smoothing.sigma0, smoothing.sigma_t, img_size))
    runner = build_train_runner(TrainSpec.from_config(cfg, hooks), PretrainModel(net), dataset, optimizer,
                                experiment_name=cfg.config_name, cfg=cfg, launcher=launcher)
    crops = f", {cfg.data.crops} crops each" if cfg.data.get("crops") else ""
    runner.logger.info(f"{model_cfg['arch']} ViT-{model_cfg['size']}: {len(dataset)} images, effective batch "
                       f"{cfg.effective_batch} images ({cfg.batch_size} per process{crops}), peak lr {lr:.3g} "
                       f"= {cfg.optim.base_lr:g} x {cfg.effective_batch} / 256")
    if isinstance(net, AdPE):
        adv_lr = peak_lr(cfg.optim.adv_base_lr, cfg.effective_batch)
        runner.logger.info(f"AdPE {net.adv_mode} mode: delta bounded by {net.adv_eps:g} ({net.adv_norm}), ascent "
                           f"peak lr {adv_lr:.3g} = {cfg.optim.adv_base_lr:g} x {cfg.effective_batch} / 256")
    return runner


def pretrain_dataset(cfg: Config) -> CheckedImageFolder:
    """The training images of a pre-training config: uint8 crops (normalised on the device by PretrainModel)."""
    transform = pretrain_transform(cfg.model.img_size, cfg.data.crop_scale, cfg.data.hflip, normalize=False)
    if cfg.data.get("crops"):  # MAE+ / AdPE: several crops of each image, stacked
        transform = MultiCrop(transform, cfg.data.crops)
    return image_folder(cfg.data.root, "train", transform, cfg.data.skip_invalid, decode=decode_tensor)


def optimizer_groups(net: DropPos | MAE | MAEPlus, cfg: Config) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights with 2+ dims; AdPE adds its perturbation's ascent group (peak lr
    optim.adv_base_lr x effective_batch / 256, as the authors scale it)."""
    if isinstance(net, AdPE):
        return adpe_param_groups(net, cfg.optim.weight_decay, peak_lr(cfg.optim.adv_base_lr, cfg.effective_batch))
    return param_groups_weight_decay(net, cfg.optim.weight_decay)


def export_encoder(runner: Runner) -> Path:
    """Write the trained encoder in our format (decoder and mask tokens dropped) as work_dir/encoder.safetensors."""
    net = unwrap_model(runner.model).net
    meta = dict(pretrain=dict(runner.cfg.model), config=runner.cfg.config_name, epochs=runner.epoch)
    return export_checkpoint(net, Path(runner.work_dir) / "encoder.safetensors", meta=meta)


def run_pretrain(config: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train per `config` (a file or a shipped config name) with `key=value` overrides; returns the encoder path."""
    runner = trained_runner(build_pretrain_runner, CONFIGS_DIR, config, overrides)
    path = Path(runner.work_dir) / "encoder.safetensors"
    if is_main_process():
        export_encoder(runner)
        runner.logger.info(f"encoder written to {path}")
    return path
