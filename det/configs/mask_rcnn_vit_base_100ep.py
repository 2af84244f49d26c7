# ViTDet's own 100-epoch recipe (its MAE ViT-B reference: 51.6 box AP, 45.9 mask AP): batch 64, lr 1e-4,
# 184,375 steps, x0.1 at 163,889 and 177,546.
_base_ = ["_base_/det_runtime.py"]
effective_batch = 64
batch_size = 2  # 64 = 2 x 32 GPUs, or 4 x 8 GPUs x 2 accumulation steps
optim = dict(lr=1e-4)
schedule = dict(iterations=184_375, steps=(163_889, 177_546))
