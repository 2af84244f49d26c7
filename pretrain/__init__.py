"""Pre-training: DropPos (and, as it lands, the MAE baseline) on the shared ViT backbone."""
from .droppos import DropPos, position_loss
from .smoothing import position_smoothing, sigma_at

__all__ = ["DropPos", "position_loss", "position_smoothing", "sigma_at"]
