"""What every run (PPO and SFT alike) sets up on Accelerate: the Accelerator (device choice, gradient
accumulation, trackers), the claim on its run dir, and flags agreed across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from ..checkpoints.rundir import RunDirError, RunLock, claim_run_dir
from ..config import ConfigError, TrainConfig

__all__ = ["all_reduce_sum", "any_rank", "claim", "make_accelerator"]


def make_accelerator(cfg: TrainConfig, gradient_accumulation_steps: int = 1) -> Accelerator:
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    from .trackers import report_to

    trackers = report_to(cfg)  # a tracker asked for but not installed fails here, before anything loads
    return Accelerator(cpu=cpu, gradient_accumulation_steps=gradient_accumulation_steps,
                       log_with=trackers or None, project_dir=str(cfg.run_dir))


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return bool(t.item() > 0)


def all_reduce_sum(accelerator: Accelerator):
    """A function summing a tensor over every process (the identity on one process)."""

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x.to(accelerator.device), reduction="sum") if accelerator.num_processes > 1 else x

    return reduce


def claim(cfg: TrainConfig, accelerator: Accelerator) -> RunLock | None:
    """The main process locks the run dir (checkpoints/rundir.py); if it cannot, every process raises."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = claim_run_dir(cfg)
        except RunDirError as err:
            error = err
    if any_rank(accelerator, error is not None):
        raise error or RunDirError(f"the main process could not claim {cfg.run_dir}")
    return lock
