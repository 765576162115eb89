"""What acts: policies implementing the protocol of :mod:`vla_structppo.policies.base`."""

from .base import ActOutput, EvalOutput, Policy, categorical_stats
from .mlp import AutoregressiveMLPPolicy, MLPPolicy

__all__ = ["ActOutput", "AutoregressiveMLPPolicy", "EvalOutput", "MLPPolicy", "Policy", "categorical_stats"]
