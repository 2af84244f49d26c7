# Tab. 4 row tau = inf (attentive reconstruction off; paper: 82.84 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(tau=None)  # None = inf = off
