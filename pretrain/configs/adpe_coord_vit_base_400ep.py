# AdPE ViT-B/16, coordinate mode, 400 epochs: masked tokens (a learned mask token, as MAE+) get the sin-cos position
# embedding at their (row, col) shifted by an adversarial delta in R^2, in patch cells.
_base_ = ["adpe_vit_base_400ep.py"]
# Unknown for the published runs, as in embedding mode; L2 radius 1.0 (the authors' --eps default) lets masked
# positions move up to one patch cell, as far as a neighbour.
model = dict(adv_mode="coordinate", adv_norm="l2", adv_eps=1.0)
