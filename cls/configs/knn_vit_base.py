# k-NN on frozen features, DINO's protocol (Caron et al., ICCV 2021, Sec. 4 and its eval_knn.py): L2-normalised
# features, the k nearest train images by cosine similarity vote for their class with weight exp(similarity / 0.07);
# k = 10, 20, 100, 200 in one pass, k = 20 reported (DINO's Tab. 2). No training.
#   droppos-bench cls knn knn_vit_base ckpt=checkpoints/dino_vitbase16_pretrain.pth data.root=/data/imagenet
_base_ = ["_base_/frozen.py"]
# feature: "token" ([CLS], DINO's), "avg" (mean patch token after the final norm) or "auto": the pooling the
# checkpoint's family fine-tunes with (avg for DropPos, MAE, BEiT, BEiT v2, data2vec, SimMIM, CAE and our own
# pre-trainings, whose [CLS] no objective trains; token for DINO, iBOT, DINOv2, MoCo v3, DeiT III, CLIP and a random
# init); chunks bound memory to query_chunk x train_chunk similarities at a time.
knn = dict(feature="auto", ks=(10, 20, 100, 200), report_k=20, temperature=0.07, query_chunk=1024,
           train_chunk=65536)
