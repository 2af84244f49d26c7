# Tab. 3 row sigma = 2, constant (paper: 82.79 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
smoothing = dict(sigma0=2.0, sigma_t=2.0)
