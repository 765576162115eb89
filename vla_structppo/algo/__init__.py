"""Pure math of structured-advantage PPO (ALGORITHM.md §2-§7): no transformers, no simulator, no
Accelerate, only torch."""

from .credit import (
    BASELINE_SCALES,
    CREDIT_MODES,
    HEAD_MODES,
    baseline_scale,
    counterfactual_baseline,
    credit_advantages,
)
from .gae import chunk_return, compute_gae
from .heads import CENTERINGS, HeadOutput, StructuredAdvantageHead, ValueHead
from .losses import RATIOS, head_loss, normalize_advantages, ppo_policy_loss, value_loss

__all__ = [
    "BASELINE_SCALES",
    "CENTERINGS",
    "CREDIT_MODES",
    "HEAD_MODES",
    "RATIOS",
    "HeadOutput",
    "StructuredAdvantageHead",
    "ValueHead",
    "baseline_scale",
    "chunk_return",
    "compute_gae",
    "counterfactual_baseline",
    "credit_advantages",
    "head_loss",
    "normalize_advantages",
    "ppo_policy_loss",
    "value_loss",
]
