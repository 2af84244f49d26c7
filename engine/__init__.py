"""The training engine shared by every task: mmengine's Runner plus what it lacks for us (sync-free bf16
optimisation and logging, epoch-seeded randomness for exact resume, atomic checkpoints, safe resume)."""
from .config import NoGPUError, check_gpu, load_config
from .optim import DeviceOptimWrapper
from .runner import TrainRunner, batch_plan, build_train_runner, distributed_launcher, peak_lr

__all__ = ["DeviceOptimWrapper", "NoGPUError", "TrainRunner", "batch_plan", "build_train_runner", "check_gpu",
           "distributed_launcher", "load_config", "peak_lr"]
