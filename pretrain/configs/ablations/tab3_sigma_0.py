# Tab. 3 row sigma = 0 (no smoothing: one-hot targets; paper: 82.85 fine-tuned).
_base_ = ["../droppos_vit_base_200ep.py"]
smoothing = dict(sigma0=0.0, sigma_t=0.0)
