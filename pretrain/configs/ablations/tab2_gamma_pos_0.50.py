# Tab. 2 row gamma_pos = 0.5 (paper: 82.86 fine-tuned, 86.70 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(pos_mask_ratio=0.5)
