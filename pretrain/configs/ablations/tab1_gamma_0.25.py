# Tab. 1 row gamma = 0.25 (paper: 82.02 fine-tuned, 79.62 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(mask_ratio=0.25)
