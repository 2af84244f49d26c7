# Tab. 4 row tau = 0.5 (paper: 82.86 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(tau=0.5)
