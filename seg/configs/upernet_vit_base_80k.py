# The paper's ADE20K recipe (Tab. 1-4 and 6) for DropPos: ViT-B, 80k steps at batch 16, lr 7e-4.
# Other pre-training methods use their own lr: upernet_vit_base_80k_lr1e-4 (MAE, MoCo v3, SemMAE) and
# upernet_vit_base_80k_lr4e-4 (BootMAE, LocalMIM).
_base_ = ["_base_/seg_runtime.py"]
