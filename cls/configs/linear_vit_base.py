# Linear heads on cached frozen features, after DINOv2's linear evaluation (Oquab et al., TMLR 2024, Sec. 7 and its
# eval/linear.py): one pass of feature extraction, then a head per (feature, learning rate) trained together with
# SGD (momentum 0.9, no weight decay, cosine schedule), 10 epochs at batch 1024; the best head chosen on 10% of train
# held out (DINOv2 chooses on val: here val only scores). Learning rates: DINOv2's grid, scaled by batch / 256.
# Features: [CLS]; [CLS] + mean patch token; the last 4 blocks' [CLS]; both (DINOv2's n_last_blocks x avgpool grid).
# Unlike DINOv2 the heads see the cached center crops, not random-resized-crop augmentations.
# head: a released head's file instead (DINOv2's dinov2_vitb14_linear4_head.pth reads cls4+avg, ..._linear_head.pth
# cls+avg; chosen by its width): it scores val, nothing is trained, and the train split is never read.
#   droppos-bench cls linear linear_vit_base ckpt=checkpoints/dino_vitbase16_pretrain.pth data.root=/data/imagenet
_base_ = ["_base_/frozen.py"]
linear = dict(features=("cls", "cls+avg", "cls4", "cls4+avg"),
              base_lrs=(1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1),
              epochs=10, batch_size=1024, holdout=0.1, weight_decay=0.0, head=None)
