# What the frozen protocols (cls knn, cls linear) share: the encoder's features of train and val, computed once per
# checkpoint, transform and split (resize 256, center crop 224), cached as float16 and reused by every protocol.
_base_ = ["runtime.py"]
ckpt = None
data = dict(root="data/imagenet", num_workers=10)
# global_pool "token": the encoder with its final norm, as pre-trained; which feature a protocol reads is its own option
model = dict(size="base", img_size=224, global_pool="token", drop_path_rate=0.0)
batch_size = 256  # images per extraction batch
# last_layers 4 also keeps the [CLS] of blocks -2..-4 (DINOv2's n_last_blocks=4): 5 x 768 float16 per image, about
# 9.8 GB for ImageNet's train split; 1 keeps the last block's [CLS] and mean patch token only (2 x 768).
# flush_every: batches kept on the device between writes (the resume points of a killed extraction).
features = dict(cache_dir="work_dirs/feature_cache", last_layers=4, flush_every=64)
