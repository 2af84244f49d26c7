# k-NN on a tiny ViT's frozen features of the colour-ramp direction task (benchmarks/synthetic/ramps.py), on a CPU in
# seconds: the frozen-protocol test's recipe (droppos_tiny_ramps's encoder against random init).
_base_ = ["knn_vit_base.py"]
data = dict(root="data/ramp_directions", num_workers=0)
model = dict(size="tiny", img_size=64, depth=2)
batch_size = 64
features = dict(last_layers=1)  # 2 blocks
# the mean patch token: DropPos trains the patch tokens (its fine-tuning pools them too), never the [CLS]
knn = dict(feature="avg", ks=(1, 5, 10, 20), report_k=1, query_chunk=64, train_chunk=128)
precision = "fp32"
require_gpu = False  # sized for a CPU
