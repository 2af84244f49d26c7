# Tab. 2 row gamma_pos = 1 (no anchor positions; paper: 82.66 fine-tuned, 19.44 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(pos_mask_ratio=1.0)
