"""The Accelerator of a run (PPO and SFT alike): device choice, gradient accumulation, trackers."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from ..config import ConfigError, TrainConfig

__all__ = ["make_accelerator"]


def make_accelerator(cfg: TrainConfig, gradient_accumulation_steps: int = 1) -> Accelerator:
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    return Accelerator(cpu=cpu, gradient_accumulation_steps=gradient_accumulation_steps,
                       log_with="tensorboard" if cfg.logging.tensorboard else None, project_dir=str(cfg.run_dir))
