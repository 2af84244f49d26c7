# Tab. 1 row gamma = 0.5 (paper: 82.78 fine-tuned, 87.27 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(mask_ratio=0.5)
