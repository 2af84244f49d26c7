"""Pre-training on the shared ViT backbone: DropPos and the MAE baseline."""
from .droppos import DropPos, position_loss
from .mae import MAE, reconstruction_loss
from .smoothing import position_smoothing, sigma_at

__all__ = ["MAE", "DropPos", "position_loss", "position_smoothing", "reconstruction_loss", "sigma_at"]
