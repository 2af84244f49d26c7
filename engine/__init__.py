"""What every task shares: mmengine's Runner plus what it lacks for us (sync-free bf16 optimisation and logging,
seeded randomness for exact resume, atomic checkpoints, safe resume), and the shared infrastructure (atomic writes,
ImageNet-layout image folders, seeds). It imports no other package of this project, and every package may use it."""
from .config import NoGPUError, check_gpu, load_config
from .optim import DeviceOptimWrapper
from .runner import TrainRunner, batch_plan, build_train_runner, distributed_launcher, peak_lr

__all__ = ["DeviceOptimWrapper", "NoGPUError", "TrainRunner", "batch_plan", "build_train_runner", "check_gpu",
           "distributed_launcher", "load_config", "peak_lr"]
