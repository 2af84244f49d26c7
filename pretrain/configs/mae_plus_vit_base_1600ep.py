# MAE+ ViT-B/16, 1600 epochs, 40 warmup epochs (AdPE paper: 83.9 fine-tuned at 224).
_base_ = ["mae_plus_vit_base_400ep.py"]
schedule = dict(epochs=1600, warmup_epochs=40)
