# The paper's COCO recipe (Tab. 1-4 and 6): ViT-B, 1024 x 1024, 1x schedule (88,750 steps at batch 16, lr 3e-4,
# x0.1 at 78,889 and 85,463).
_base_ = ["_base_/det_runtime.py"]
