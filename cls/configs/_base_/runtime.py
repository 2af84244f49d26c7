# Runtime settings shared by every classification job (fine-tuning, linear probe, position probe).
# an image PIL cannot decode stops the run with its name; True skips such files (counted in the log)
data = dict(skip_invalid=False)
# BEiT-style relative position tables and layer scales: "auto" builds them where the checkpoint has them
model = dict(rel_pos_bias="auto", layer_scale_init="auto")
ckpt_format = "auto"  # its release format (`droppos-bench convert --help` lists them); "auto": detected from its keys
allow_pickle = False  # allow checkpoints that need arbitrary Python objects (only files you trust)
require_gpu = True  # stop at start when torch sees no GPU (a recipe sized for GPUs); False runs on the CPU
precision = "bf16"  # autocast in training and evaluation; "fp32" to turn it off
compile = False
log_interval = 50
checkpoint = dict(interval=1, max_keep=1)  # plus the best top-1 checkpoint
seed = 0
work_dir = None  # default: work_dirs/<config name>
resume = False  # True: continue from the last checkpoint in work_dir; or a checkpoint path
