"""The allowed values of the config's choice fields and the helpers every section's checks share.

Kept free of torch, gymnasium and the algorithm modules (a bad recipe fails before anything heavy loads);
tests/test_config.py checks these lists equal the ones the code implements.
"""

from __future__ import annotations

import difflib

from ..errors import UserError

__all__ = ["ACTION_HEADS", "ACTION_TOKEN_MODES", "AGGREGATIONS", "AUTORESET_MODES", "BASELINE_SCALES", "CENTERINGS",
           "CHUNK_TAILS", "CREDIT_MODES", "DECODINGS", "DEVICES", "DTYPES", "ENV_IDS", "ESTIMATORS", "HEAD_MODES", "HORIZON_ENDS",
           "LIBERO_PROTOCOLS", "LR_SCHEDULES", "METAWORLD_REWARDS", "OBSERVATIONS", "POLICY_TYPES", "RATIOS",
           "SHARED_SOURCES", "SURROGATES", "TRACKERS", "VALUE_NETWORKS", "VECTOR_MODES", "ConfigError", "at_least",
           "nearest_hint", "not_one_of"]

ENV_IDS = ("structured", "metaworld", "libero", "maniskill", "gym")
VECTOR_MODES = ("sync", "async")
POLICY_TYPES = ("mlp", "ar_mlp", "vla")
VALUE_NETWORKS = ("shared", "separate")
OBSERVATIONS = ("state", "image")
ACTION_TOKEN_MODES = ("auto", "last_k", "add", "openvla")
DTYPES = ("float32", "bfloat16", "float16")
CREDIT_MODES = ("joint", "shared_local", "structured", "counterfactual")
HEAD_MODES = ("shared_local", "structured", "counterfactual")
CENTERINGS = ("policy", "uniform", "none")
RATIOS = ("joint", "action", "token", "token_clip")
DECODINGS = ("autoregressive", "parallel")
ESTIMATORS = ("gae", "grpo")
AGGREGATIONS = ("sample_mean", "token_mean")
CHUNK_TAILS = ("repeat", "drop")
ACTION_HEADS = ("tokens", "l1")
SHARED_SOURCES = ("gae", "head")
SURROGATES = ("per_dim", "mean")
BASELINE_SCALES = ("one", "fitted")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
LR_SCHEDULES = ("constant", "linear", "cosine", "adaptive")
DEVICES = ("auto", "cpu", "cuda")
AUTORESET_MODES = ("same_step", "next_step")
HORIZON_ENDS = ("terminate", "truncate")
METAWORLD_REWARDS = ("dense", "success")
LIBERO_PROTOCOLS = ("raw", "openvla")


class ConfigError(UserError, ValueError):
    """A recipe or override that cannot run; the message says what to change."""


def nearest_hint(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def not_one_of(key: str, value: str, options: tuple[str, ...]) -> str:
    return f"{key}={value!r} is not one of {list(options)}{nearest_hint(value, options)}"


def at_least(pairs: list[tuple[str, float, float]]) -> list[str]:
    """``"KEY must be >= LOW, got VALUE"`` for every ``(key, value, low)`` below its bound."""
    return [f"{key} must be >= {low}, got {value}" for key, value, low in pairs if value < low]
