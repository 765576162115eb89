"""The run directory's one owner: file names, what a checkpoint is and where, its base model, saving and
loading an agent (docs/architecture.md#run-directory).

Layered above ``policies/`` and ``envs/`` and below ``train/``, ``eval.py`` and ``hub.py``.
"""

from . import layout
from .agent_io import (
    build_agent,
    build_vla_policy,
    load_agent,
    load_pretrained_agent,
    preflight_vla,
    save_agent,
)
from .locate import (
    HF_SCHEME,
    HubError,
    base_model_of,
    download,
    parse_hf_uri,
    pretrained_model,
    read_config,
    resolve,
    run_dir_of,
    validate_repo_id,
    verify,
)
from .store import CheckpointError, list_checkpoints, load_module, save_module, torch_load, write_atomic_dir

__all__ = [
    "HF_SCHEME", "CheckpointError", "HubError", "base_model_of", "build_agent", "build_vla_policy", "download",
    "layout", "list_checkpoints", "load_agent", "load_module", "load_pretrained_agent", "parse_hf_uri", "preflight_vla",
    "pretrained_model", "read_config", "resolve",
    "run_dir_of", "save_agent", "save_module", "torch_load", "validate_repo_id", "verify", "write_atomic_dir",
]
