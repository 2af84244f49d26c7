# DropPos ViT-B/16, 800 epochs (paper Tab. 5: 84.2 fine-tuned; Tab. 6).
_base_ = ["_base_/pretrain_runtime.py", "_base_/droppos_vit_base.py"]
schedule = dict(epochs=800)
# The authors' release clips each parameter's gradient to norm 5 (its default --clip_grad, which its scripts keep).
optim = dict(clip_grad=5.0, clip_mode="per_param")
