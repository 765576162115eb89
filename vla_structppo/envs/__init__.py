"""What is acted on: gymnasium vector envs with one observation convention."""

from .registry import ENV_IDS, make_env
from .structured import StructuredTaskSpec, StructuredTaskVectorEnv

__all__ = ["ENV_IDS", "StructuredTaskSpec", "StructuredTaskVectorEnv", "make_env"]
