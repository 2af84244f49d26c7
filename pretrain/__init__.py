"""Pre-training on the shared ViT backbone: DropPos, the MAE baseline, and MAE+ / AdPE."""
from .adpe import AdPE
from .droppos import DropPos, position_loss
from .mae import MAE, reconstruction_loss
from .mae_plus import MAEPlus
from .smoothing import position_smoothing, sigma_at

__all__ = ["MAE", "AdPE", "DropPos", "MAEPlus", "position_loss", "position_smoothing", "reconstruction_loss",
           "sigma_at"]
