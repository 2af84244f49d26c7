# Tab. 3 row sigma 2 -> 0, linear decay (paper: 82.88 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
smoothing = dict(sigma0=2.0, sigma_t=0.0)
