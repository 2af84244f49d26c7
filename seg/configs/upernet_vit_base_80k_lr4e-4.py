# The paper's ADE20K recipe with its lr for BootMAE and LocalMIM checkpoints (Tab. 6).
_base_ = ["_base_/seg_runtime.py"]
optim = dict(lr=4e-4)
