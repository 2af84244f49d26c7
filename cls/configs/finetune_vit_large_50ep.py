# ViT-L/16 fine-tuning, 50 epochs at effective batch 1024 (paper Tab. 5: 83.7 after 200 ep, 85.8 after 800 ep).
_base_ = ["_base_/finetune_runtime.py"]
model = dict(size="large", drop_path_rate=0.2)  # MAE's ViT-L recipe
batch_size = 64  # 1024 = 64 x 8 GPUs x 2 accumulation steps
schedule = dict(epochs=50)
