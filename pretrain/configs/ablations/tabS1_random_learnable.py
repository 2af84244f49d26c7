# Tab. S1 row random init, learnable (paper: 82.48 fine-tuned, 38.72 mIoU).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(pos_embed="random", pos_embed_trainable=True)
