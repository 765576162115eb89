"""The one table of run-directory and checkpoint file names (docs/architecture.md#run-directory).

```
<run>/config.yaml             the resolved recipe            <run>/command.txt    the command that started it
<run>/metrics.jsonl           one line per update / epoch    <run>/tb/            TensorBoard events
<run>/plots/*.png             credit plots, learning curve   <run>/eval/          results.json, results.md, videos/
<run>/checkpoints/<n>/        one checkpoint (below), written under a temporary name and renamed
<run>/checkpoints/last        -> the newest complete checkpoint
```

A checkpoint holds ``config.yaml`` and the policy's weights — ``policy.safetensors`` (MLP policies), a
peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``) or a fully fine-tuned
transformers model (``config.json`` + ``model.safetensors``), the VLA's ``action_tokenizer.json`` and
processor — then the heads (``value_head.safetensors``, ``advantage_head.safetensors``), for a normalised
env its statistics (``env_normalization.json``) and, to resume
exactly, ``trainer_state.pt`` and one ``rank_<r>.pt`` per process.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..policies.action_tokenizer import FILE_NAME as ACTION_TOKENIZER

__all__ = [
    "ACTION_TOKENIZER", "ADAPTER_FILES", "CHECKPOINTS", "COMMAND", "CONFIG", "ENV_NORMALIZATION", "EVAL",
    "FULL_MODEL_FILES",
    "HEAD_FILES", "LAST", "METRICS", "PLOTS", "POLICY_WEIGHTS", "PROCESSOR", "README", "RESULTS_JSON",
    "RESULTS_MD", "RESUME_ONLY", "TB", "TRAINER_STATE", "VIDEOS", "checkpoint_kind", "is_resume_only",
    "policy_files", "rank_state",
]

# the run dir
CONFIG = "config.yaml"
COMMAND = "command.txt"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last"
PLOTS = "plots"
TB = "tb"
EVAL = "eval"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
VIDEOS = "videos"

# a checkpoint
POLICY_WEIGHTS = "policy.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
FULL_MODEL_FILES = ("config.json", "model.safetensors")
PROCESSOR = "processor_config.json"
README = "README.md"
HEAD_FILES = {"value_head": "value_head.safetensors", "adv_head": "advantage_head.safetensors"}
ENV_NORMALIZATION = "env_normalization.json"  # observation / reward statistics of a normalised env (env.id=gym)
TRAINER_STATE = "trainer_state.pt"
_RANK_STATE = re.compile(r"^rank_\d+\.pt$")
# resume-only state (optimizer moments, RNG, rollout buffers): not needed to load the model
RESUME_ONLY = (TRAINER_STATE, "rank_<r>.pt")


def rank_state(rank: int) -> str:
    return f"rank_{rank}.pt"


def is_resume_only(name: str) -> bool:
    return name == TRAINER_STATE or bool(_RANK_STATE.match(name))


def checkpoint_kind(directory: Path) -> str | None:
    """``state`` (an MLP policy), ``adapter`` (a VLA's peft adapter), ``full`` (a fully fine-tuned VLA) or
    None when ``directory`` holds no policy weights next to a ``config.yaml``."""
    d = Path(directory)
    if not (d / CONFIG).is_file():
        return None
    if (d / POLICY_WEIGHTS).is_file():
        return "state"
    if all((d / f).is_file() for f in ADAPTER_FILES):
        return "adapter"
    if all((d / f).is_file() for f in FULL_MODEL_FILES):
        return "full"
    return None


def policy_files(kind: str) -> list[str]:
    """The files the policy of a ``kind`` checkpoint needs."""
    return {"state": [POLICY_WEIGHTS], "adapter": [*ADAPTER_FILES, ACTION_TOKENIZER],
            "full": [*FULL_MODEL_FILES, ACTION_TOKENIZER]}[kind]
