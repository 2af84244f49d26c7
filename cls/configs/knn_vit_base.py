# k-NN on frozen features, DINO's protocol (Caron et al., ICCV 2021, Sec. 4 and its eval_knn.py): L2-normalised
# features, the k nearest train images by cosine similarity vote for their class with weight exp(similarity / 0.07);
# k = 10, 20, 100, 200 in one pass, k = 20 reported (DINO's Tab. 2). No training.
#   droppos-bench cls knn knn_vit_base ckpt=checkpoints/dino_vitbase16_pretrain.pth data.root=/data/imagenet
_base_ = ["_base_/frozen.py"]
# feature: "token" ([CLS], DINO's) or "avg" (mean patch token after the final norm, for encoders pre-trained without
# a [CLS] objective such as MAE's); chunks bound memory to query_chunk x train_chunk similarities at a time.
knn = dict(feature="token", ks=(10, 20, 100, 200), report_k=20, temperature=0.07, query_chunk=1024,
           train_chunk=65536)
