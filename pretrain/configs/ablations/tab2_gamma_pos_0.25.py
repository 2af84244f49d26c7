# Tab. 2 row gamma_pos = 0.25 (paper: 82.71 fine-tuned, 65.19 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(pos_mask_ratio=0.25)
