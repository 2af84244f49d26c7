# AdPE ViT-B/16, embedding mode, 1600 epochs, 40 warmup epochs (AdPE paper: 84.1 fine-tuned at 224).
_base_ = ["adpe_vit_base_400ep.py"]
schedule = dict(epochs=1600, warmup_epochs=40)
