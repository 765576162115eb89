"""Atomic, strictly loaded checkpoints (ARCHITECTURE.md run directory).

``checkpoints/<update>/`` holds the policy (``policy.safetensors``; for a VLA the peft adapter,
processor and ``action_tokenizer.json``), ``value_head.safetensors``,
``advantage_head.safetensors`` (when the head exists), ``trainer_state.pt`` (optimizer, update,
counters), ``rank_<r>.pt`` (per-process RNG, env and rollout state) and ``config.yaml``. It is
written under a temporary name and renamed, so a crash never leaves a half checkpoint;
``checkpoints/last`` is a symlink to the newest complete one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "find_checkpoint", "list_checkpoints", "load_module", "required_files", "save_module"]

# the heads: each in its own file (the policy's files are the agent's business: adapter or weights)
MODULE_FILES = {"value_head": "value_head.safetensors", "adv_head": "advantage_head.safetensors"}


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or incomplete; the message names the file."""


def save_module(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_module(module: torch.nn.Module, path: Path) -> None:
    """Strict: every key must match (LeRobot #4047 lost statistics by loading leniently)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    state = load_file(str(path))
    device = next(iter(module.state_dict().values())).device if module.state_dict() else "cpu"
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)


def required_files(policy_files: list[str], has_head: bool, world_size: int) -> list[str]:
    files = [*policy_files, "value_head.safetensors", "trainer_state.pt", "config.yaml"]
    files += [f"rank_{r}.pt" for r in range(world_size)]
    if has_head:
        files.append("advantage_head.safetensors")
    return files


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and not p.is_symlink()),
                  key=lambda p: int(p.name))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A run dir (-> its ``checkpoints/last``) or a checkpoint dir -> the checkpoint dir."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"resume path does not exist: {p}")
    if (p / "trainer_state.pt").is_file():
        return p
    last = p / "checkpoints" / "last"
    if last.exists():
        return last.resolve()
    found = list_checkpoints(p)
    if found:
        return found[-1]
    raise CheckpointError(f"{p} is neither a checkpoint dir (no trainer_state.pt) nor a run dir with checkpoints/")


def write_atomic_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written ``tmp`` dir to ``final`` and point ``last`` at it."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = final.parent / "last"
    tmp_link = final.parent / f".last-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(final.name, tmp_link)
    os.replace(tmp_link, link)


def prune(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def to_torch_tree(tree: Any) -> Any:
    """numpy arrays -> tensors, so ``torch.load(weights_only=True)`` can read the state back."""
    import numpy as np

    if isinstance(tree, dict):
        return {k: to_torch_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_torch_tree(v) for v in tree)
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree.copy())
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    return torch.load(path, weights_only=True, map_location="cpu")


def check_init_from(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"init_from={str(p)!r} is not a directory (give a checkpoint dir, e.g. "
                              "runs/<name>/checkpoints/last)")
    return p
