"""What is acted on: gymnasium vector envs behind one contract (envs/contract.py)."""

from .contract import BinVectorEnv, EpisodeTracker, NoExpertError, check_env, map_obs, take_obs
from .registry import ENV_IDS, make_env, tasks_of
from .structured import StructuredTaskSpec, StructuredTaskVectorEnv, optimal_bins

__all__ = ["ENV_IDS", "BinVectorEnv", "EpisodeTracker", "NoExpertError", "StructuredTaskSpec",
           "StructuredTaskVectorEnv", "check_env", "make_env", "map_obs", "optimal_bins", "take_obs", "tasks_of"]
