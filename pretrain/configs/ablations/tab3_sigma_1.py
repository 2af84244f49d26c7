# Tab. 3 row sigma = 1, constant (paper: 82.91 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
smoothing = dict(sigma0=1.0, sigma_t=1.0)
