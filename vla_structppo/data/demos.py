"""Demonstration datasets for behaviour cloning: the format, saving, loading, action statistics.

A demonstration dataset is what ``datasets.Dataset.save_to_disk`` writes, with one row per step:
``image`` (a ``datasets.Image``), ``instruction`` (str), ``action`` (the continuous action, a list of D
floats), ``episode_index`` (int) and ``success`` (whether that step's episode reached its goal).
:func:`save_demos` also writes ``stats.json`` next to the arrow files: per-dim q01 / q99 (the action
normalisation bounds OpenVLA uses), min / max and mean / std of the actions. :func:`load_demos` reads
both back and fails with the fix in the message; a dataset written by other tools without
``stats.json`` still loads (its statistics are computed from the actions).

Recording them with a scripted expert is :mod:`vla_structppo.data.record`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import TrainConfig
from ..errors import UserError

if TYPE_CHECKING:
    import datasets

__all__ = ["RECORDING_FILE", "REQUIRED_COLUMNS", "STATS_FILE", "ActionStats", "DemoDatasetError", "action_array",
           "load_demos", "quantile_bounds", "recording_mismatches", "recording_of", "save_demos"]

# the columns behaviour cloning reads; ``episode_index`` and ``success`` are bookkeeping
REQUIRED_COLUMNS = ("image", "instruction", "action")
STATS_FILE = "stats.json"
RECORDING_FILE = "recording.json"
# env settings that change how a recording is stepped, not what it holds
_NOT_RECORDED = frozenset({"num_envs", "vector_mode", "observation"})
_NOT_RECORDED_IN_SECTION = frozenset({"autoreset_mode", "reward"})


class DemoDatasetError(UserError, ValueError):
    """A demonstration dataset that is missing or malformed; the message says how to make a good one."""


def quantile_bounds(actions: np.ndarray, low_q: float = 0.01, high_q: float = 0.99) -> tuple[list[float], list[float]]:
    """Per-dim ``(q01, q99)`` of ``actions [N, D]`` (robust to the outliers teleoperation leaves; the
    action normalisation bounds OpenVLA uses)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise DemoDatasetError(f"need actions of shape [N, D] with N > 0, got {a.shape}")
    low, high = np.quantile(a, low_q, axis=0), np.quantile(a, high_q, axis=0)
    # a constant dim (e.g. a gripper always open in the demos) would divide by zero
    same = high - low < 1e-8
    low, high = np.where(same, low - 1.0, low), np.where(same, high + 1.0, high)
    return low.tolist(), high.tolist()


@dataclass
class ActionStats:
    """Per-dim statistics of a dataset's continuous actions (each a list of D floats)."""

    q01: list[float]
    q99: list[float]
    min: list[float]
    max: list[float]
    mean: list[float]
    std: list[float]
    count: int

    @classmethod
    def of(cls, actions: np.ndarray) -> ActionStats:
        a = np.asarray(actions, dtype=np.float64)
        q01, q99 = quantile_bounds(a)
        return cls(q01, q99, a.min(0).tolist(), a.max(0).tolist(), a.mean(0).tolist(), a.std(0).tolist(), len(a))

    @property
    def action_dims(self) -> int:
        return len(self.q01)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: Path) -> ActionStats:
        try:
            stats = cls(**data)
        except TypeError as err:
            raise DemoDatasetError(f"{source}: not a statistics file of this version ({err}); delete it to have "
                                   "the statistics recomputed from the actions") from None
        widths = {len(v) for v in (stats.q01, stats.q99, stats.min, stats.max, stats.mean, stats.std)}
        if len(widths) != 1:
            raise DemoDatasetError(f"{source}: per-dim statistics of different lengths {sorted(widths)}")
        return stats


# -- on disk -----------------------------------------------------------------------------------------
def action_array(ds: datasets.Dataset) -> np.ndarray:
    """The ``action`` column as ``float64 [N, D]`` (fails on ragged or non-numeric actions)."""
    try:
        a = np.asarray(ds.with_format("numpy")[:]["action"], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise DemoDatasetError(f"the action column is not a list of D numbers per row ({err})") from None
    if a.ndim != 2 or len(a) == 0:
        raise DemoDatasetError(f"actions must have shape [N, D] with N > 0, got {a.shape}")
    return a


def save_demos(ds: datasets.Dataset, path: str | Path, cfg: TrainConfig | None = None) -> Path:
    """``ds.save_to_disk(path)`` plus ``stats.json`` (the action statistics) in the same dir, and with
    ``cfg`` (the config that recorded it) ``recording.json``: the settings the pictures and actions
    depend on, which :func:`recording_mismatches` compares against a later recipe."""
    path = Path(path)
    _check_columns(ds, path)
    stats = ActionStats.of(action_array(ds))
    ds.save_to_disk(str(path))
    (path / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=1) + "\n")
    if cfg is not None:
        (path / RECORDING_FILE).write_text(json.dumps(recording_of(cfg), indent=1, sort_keys=True) + "\n")
    return path


def recording_of(cfg: TrainConfig) -> dict:
    """What a recording depends on: the env's settings but how it is stepped (the generic ones and its own
    section's; other environments' sections play no part), and ``demos.*``."""
    generic = {k: v for k, v in asdict(cfg.env).items() if k not in _NOT_RECORDED and not isinstance(v, dict)}
    own = {f"{cfg.env.id}.{k}": v for k, v in asdict(cfg.env.section()).items() if k not in _NOT_RECORDED_IN_SECTION}
    return {"env": {**generic, **own}, "demos": asdict(cfg.demos)}


def recording_mismatches(path: str | Path, cfg: TrainConfig) -> list[str]:
    """``key: recorded -> now`` for every recording setting of the dataset at ``path`` that ``cfg`` changes
    (empty when they agree or the dataset has no ``recording.json``, e.g. one made by other tools)."""
    file = Path(path) / RECORDING_FILE
    if not file.is_file():
        return []
    recorded, now = json.loads(file.read_text()), json.loads(json.dumps(recording_of(cfg)))
    return [f"{section}.{key}: {recorded[section].get(key)!r} -> {value!r}"
            for section in now for key, value in now[section].items()
            if recorded.get(section, {}).get(key) != value]


def load_demos(path: str | Path) -> tuple[datasets.Dataset, ActionStats]:
    """The dataset at ``path`` and its action statistics; fails clearly on anything behaviour cloning
    cannot read (no dir, not a saved dataset, missing columns, ragged actions)."""
    import datasets

    path = Path(path)
    make = (f"make one with `vla-structppo demos RECIPE sft.dataset={path}`, convert one (`vla-structppo convert`) "
            "or point at a LeRobot dataset (a dir with meta/info.json, or its Hub id)")
    if not path.is_dir():
        raise DemoDatasetError(f"no demonstration dataset at {str(path)!r}; {make}")
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DemoDatasetError(f"{path} is neither a demonstration dataset of this project (Dataset.save_to_disk) nor "
                               f"a LeRobot dataset ({err}); {make}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DemoDatasetError(f"{path} holds a DatasetDict with splits {list(ds)}; point sft.dataset at one "
                               "split's dir (or save a single Dataset)")
    _check_columns(ds, path)
    stats_file = path / STATS_FILE
    if stats_file.is_file():
        try:
            stats = ActionStats.from_dict(json.loads(stats_file.read_text()), stats_file)
        except json.JSONDecodeError as err:
            raise DemoDatasetError(f"{stats_file}: not valid JSON ({err})") from None
    else:
        stats = ActionStats.of(action_array(ds))
    return ds, stats


def _check_columns(ds: datasets.Dataset, path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DemoDatasetError(f"the dataset at {path} lacks the columns {missing} (it has {ds.column_names}); "
                               f"behaviour cloning needs {list(REQUIRED_COLUMNS)}")
