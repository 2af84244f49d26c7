# A tiny AdPE (embedding mode) on the synthetic scenes, on a CPU in minutes; adv_mode="coordinate" for the other.
_base_ = ["mae_plus_tiny_synth.py"]
model = dict(arch="adpe", adv_mode="embedding", adv_norm="l2", adv_eps=1.0)
optim = dict(adv_base_lr=4e-3)  # peak ascent lr 1e-3, the weights' peak, as in the ViT-B recipe
