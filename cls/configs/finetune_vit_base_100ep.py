# ViT-B/16 fine-tuning, 100 epochs at effective batch 1024 (paper Tab. 5: 83.0 after DropPos 200 ep, 84.2 after 800 ep).
_base_ = ["_base_/finetune_runtime.py"]
