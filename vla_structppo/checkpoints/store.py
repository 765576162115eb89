"""Writing and reading checkpoint files: atomic directories, strict module loading, torch state.

A checkpoint directory is written under a temporary name and renamed (:func:`write_atomic_dir`), so a
crash never leaves a half checkpoint; ``checkpoints/last`` is re-pointed with an atomic rename too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..files import state_dict_mismatch
from .layout import CHECKPOINTS, LAST

__all__ = ["CheckpointError", "list_checkpoints", "load_module", "prune", "save_module", "staging_dirs", "start_dir",
           "to_torch_tree", "torch_load", "write_atomic_dir"]


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the file and what to do."""


def save_module(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_module(module: torch.nn.Module, path: Path) -> None:
    """Strict: every key and shape must match (LeRobot #4047 lost statistics by loading leniently)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type on a truncated / corrupt file
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    own = module.state_dict()
    device = next(iter(own.values())).device if own else torch.device("cpu")
    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit this module (it was saved with other settings): {mismatch}")
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The numbered checkpoint dirs of a run, oldest first (temporary and symlinked entries excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and not p.is_symlink()),
                  key=lambda p: int(p.name))


def staging_dirs(run_dir: Path, step: int) -> tuple[Path, Path]:
    """``(temporary, final)`` dirs of the checkpoint of ``step``: written into the first, renamed to the second."""
    root = Path(run_dir) / CHECKPOINTS
    return root / f".tmp-{step:06d}", root / f"{step:06d}"


def start_dir(tmp: Path) -> None:
    """An empty temporary dir (what a crashed earlier write left there is discarded)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def write_atomic_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written ``tmp`` dir to ``final`` and point ``last`` at it (both atomic renames)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = final.parent / LAST
    tmp_link = final.parent / f".{LAST}-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(final.name, tmp_link)
    os.replace(tmp_link, link)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all)."""
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
    """A ``torch.save``d state (``weights_only``: no code runs); a missing or damaged file is named."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated zip, bad pickle: the raw errors name no file
        raise CheckpointError(f"{path} is damaged or not a checkpoint file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
