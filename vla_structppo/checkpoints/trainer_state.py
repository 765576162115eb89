"""The resume state of a PPO checkpoint: what, besides the agent's weights, continues a run exactly.

Two kinds of file (names in :mod:`.layout`):

* ``trainer_state.pt`` (written once, by the main process): ``{"optimizer": state_dict, "counters": {update,
  global_step, nan_streak[, lr_scale]}, "world_size": N}``;
* ``rank_<r>.pt`` (one per process): ``{"torch_rng", "python_rng", "env": the env's ``get_state()`` (or None
  when the simulator cannot save one), "rollout": what carries over between rollouts}``.

numpy arrays travel as tensors and tuples as lists, so both files read back with
``torch.load(weights_only=True)``: no code runs when a checkpoint is opened.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import layout
from .store import CheckpointError, to_torch_tree, torch_load

__all__ = ["RankState", "TrainerState", "completed_updates", "read_rank_state", "read_trainer_state",
           "require_resume_files", "write_rank_state", "write_trainer_state"]


@dataclass
class TrainerState:
    """The optimizer, the loop's counters and the number of processes that wrote the checkpoint."""

    optimizer: dict[str, Any]
    counters: dict[str, Any]
    world_size: int


@dataclass
class RankState:
    """One process's random streams, env state and rollout carry-over (see the module doc)."""

    torch_rng: torch.Tensor
    python_rng: Any
    env: dict[str, Any] | None
    rollout: dict[str, Any]

    @classmethod
    def capture(cls, env_state: dict[str, Any] | None, rollout: dict[str, Any]) -> RankState:
        """The calling process's RNG streams now, with its env's and rollout's states."""
        return cls(torch.get_rng_state(), random.getstate(), env_state, rollout)

    def restore_rng(self) -> None:
        """Make this process draw the same random numbers the saved one would have drawn next."""
        torch.set_rng_state(self.torch_rng)
        random.setstate(_as_tuple(self.python_rng))


def write_trainer_state(directory: Path, state: TrainerState) -> None:
    torch.save({"optimizer": state.optimizer, "counters": dict(state.counters), "world_size": state.world_size},
               Path(directory) / layout.TRAINER_STATE)


def write_rank_state(directory: Path, rank: int, state: RankState) -> None:
    torch.save({"torch_rng": state.torch_rng, "python_rng": state.python_rng,
                "env": to_torch_tree(state.env) if state.env is not None else None,
                "rollout": to_torch_tree(state.rollout)}, Path(directory) / layout.rank_state(rank))


def read_trainer_state(directory: Path) -> TrainerState:
    raw = torch_load(Path(directory) / layout.TRAINER_STATE)
    return TrainerState(raw["optimizer"], dict(raw["counters"]), int(raw.get("world_size", 1)))


def read_rank_state(directory: Path, rank: int) -> RankState:
    raw = torch_load(Path(directory) / layout.rank_state(rank))
    return RankState(raw["torch_rng"], raw["python_rng"], raw["env"], raw["rollout"])


def completed_updates(directory: Path) -> int:
    """The update the checkpoint was written after."""
    return int(torch_load(Path(directory) / layout.TRAINER_STATE)["counters"]["update"])


def require_resume_files(directory: Path, rank: int, heads: list[str]) -> None:
    """Fail, naming what is missing, when ``directory`` cannot resume process ``rank`` with these heads."""
    needed = [layout.TRAINER_STATE, layout.rank_state(rank), *(layout.HEAD_FILES[attr] for attr in heads)]
    missing = [f for f in needed if not (Path(directory) / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {directory} cannot be resumed: missing {missing}. It was written by a run with another "
            "number of processes or head setting, by SFT (start from it with init_from=), or it is damaged; "
            "resume from another checkpoint.")


def _as_tuple(x: Any) -> Any:
    """``random.getstate()`` comes back from a checkpoint with lists where it had tuples."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
