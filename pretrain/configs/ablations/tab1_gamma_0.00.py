# Tab. 1 row gamma = 0 (no patch masking; paper: 81.94 fine-tuned, 59.79 position accuracy).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(mask_ratio=0.0)
