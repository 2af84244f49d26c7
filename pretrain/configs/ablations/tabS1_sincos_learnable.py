# Tab. S1 row sin-cos init, learnable (paper: 82.81 fine-tuned, 39.37 mIoU).
_base_ = ["../droppos_vit_base_200ep.py"]
model = dict(pos_embed_trainable=True)
