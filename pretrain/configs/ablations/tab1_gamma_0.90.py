# Tab. 1 row gamma = 0.9 (paper: 82.81 fine-tuned, 65.12 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(mask_ratio=0.9)
