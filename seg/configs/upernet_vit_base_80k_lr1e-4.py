# The paper's ADE20K recipe with its lr for MAE, MoCo v3 and SemMAE checkpoints (Tab. 6).
_base_ = ["_base_/seg_runtime.py"]
optim = dict(lr=1e-4)
