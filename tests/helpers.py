"""Small helpers shared by the test modules."""

from __future__ import annotations

from vla_structppo.checkpoints import build_vla_policy, preflight_vla, resolve
from vla_structppo.config import TrainConfig

# The logging overrides of every test run that looks at none of it: no progress bar, no TensorBoard, no plots.
QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.plot_every=0"]


def _start(cfg: TrainConfig):
    return resolve(cfg.init_from) if cfg.init_from else None


def vla_policy(cfg: TrainConfig, **kwargs):
    """The VLA policy of ``cfg`` (starting from ``cfg.init_from`` when set), as train and sft build it."""
    return build_vla_policy(cfg, _start(cfg), **kwargs)


def vla_preflight(cfg: TrainConfig):
    """The weight-free checks of the VLA of ``cfg``."""
    return preflight_vla(cfg, _start(cfg))
