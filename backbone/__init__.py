"""The shared ViT backbone, its checkpoint import / export, and layer-wise lr decay."""
from .checkpoint import FORMATS, Checkpoint, CheckpointError, read_checkpoint
from .checkpoint_export import LAYOUTS, export_checkpoint
from .checkpoint_load import LoadReport, infer_vit_config, load_model, load_pretrained, vit_from_config
from .layer_decay import adamw_layer_decay, layer_id, param_groups_layer_decay
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed
from .vit import VIT_SIZES, VisionTransformer, build_vit
from .vitdet import ViTDetViT

__all__ = [
    "FORMATS", "LAYOUTS", "VIT_SIZES", "Checkpoint", "CheckpointError", "LoadReport", "ViTDetViT",
    "VisionTransformer", "adamw_layer_decay",
    "build_vit", "export_checkpoint", "infer_vit_config", "layer_id", "load_model", "load_pretrained",
    "param_groups_layer_decay", "read_checkpoint", "resample_pos_embed", "sincos_2d_pos_embed", "vit_from_config",
]
