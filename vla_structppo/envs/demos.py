"""Expert demonstrations (the structured task, simulators with a scripted expert), saved as a Hugging Face
dataset for behaviour cloning.

A demonstration dataset is what ``datasets.Dataset.save_to_disk`` writes, with one row per step:
``image`` (a ``datasets.Image``), ``instruction`` (str), ``action`` (the continuous action, a list of D
floats), ``episode_index`` (int) and ``success`` (whether that step's episode reached its goal).
:func:`save_demos` also writes ``stats.json`` next to the arrow files: per-dim q01 / q99 (the action
normalisation bounds OpenVLA uses), min / max and mean / std of the actions. :func:`load_demos` reads
both back and fails with the fix in the message; a dataset written by other tools without
``stats.json`` still loads (its statistics are computed from the actions).

:func:`record_demos` records ``demos.num_episodes`` episodes per task of any env whose vector env has
``expert_bins()`` (MetaWorld), from seed ``demos.seed`` on; ``action`` is the decoded expert bin, i.e.
exactly what the env executed, and ``state`` (the robot's proprioception) is added with
``env.state_obs``. For ``env.id=structured`` it records ``sft.max_samples`` steps with
:func:`structured_demos`.

The structured task's expert is exact: goals lie on the move grid, so with ``s`` steps left it picks, per dim, the bin
that brings the error closest to 0 *among the moves after which 0 is still reachable in ``s - 1``
steps*. Plain greedy is not optimal for an even K (a VLA's 256): there is no zero move, and stepping
onto the goal early can leave an error the last step cannot cancel.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import EnvConfig, TrainConfig
from .registry import make_env
from .structured import StructuredTaskVectorEnv

if TYPE_CHECKING:
    import datasets

__all__ = ["ActionStats", "DemoDatasetError", "REQUIRED_COLUMNS", "expert_bins", "load_demos", "record_demos",
           "recording_mismatches", "recording_of", "save_demos", "structured_demos"]

# the columns behaviour cloning reads; ``episode_index`` and ``success`` are bookkeeping
REQUIRED_COLUMNS = ("image", "instruction", "action")
STATS_FILE = "stats.json"
RECORDING_FILE = "recording.json"
# env settings that change how a recording is stepped, not what it holds
_NOT_RECORDED = frozenset({"num_envs", "vector_mode", "autoreset_mode", "observation", "reward"})
# envs stepped in parallel while recording (numpy: more only costs memory)
_RECORD_ENVS = 64
# structured task steps recorded by record_demos when sft.max_samples is 0 (the CLI's default)
DEFAULT_STRUCTURED_STEPS = 256


class DemoDatasetError(ValueError):
    """A demonstration dataset that is missing or malformed; the message says how to make a good one."""


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
        from ..policies.action_tokenizer import quantile_bounds

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


# -- the expert ------------------------------------------------------------------------------------
def expert_bins(env: StructuredTaskVectorEnv, err: np.ndarray, steps_left: np.ndarray) -> np.ndarray:
    """Optimal bins ``[N, D]`` at errors ``err [N, D]`` with ``steps_left [N]`` (>= 1) steps to go.

    Works in units of half the move grid, where bin k moves by ``2k - (K - 1)`` (an integer) and the sums
    of n moves are exactly the integers v with ``|v| <= n (K - 1)`` and ``v = n (K - 1) mod 2``.
    """
    K = env.spec.num_bins
    half_grid = env.spec.move / (K - 1)
    u = np.rint(np.asarray(err, dtype=np.float64) / half_grid).astype(np.int64)  # [N, D]
    moves = 2 * np.arange(K) - (K - 1)  # [K]
    after = u[..., None] + moves  # [N, D, K] error after each bin
    n = (np.asarray(steps_left, dtype=np.int64) - 1)[:, None, None]  # steps left after this one
    reachable = (np.abs(after) <= n * (K - 1)) & ((after - n * (K - 1)) % 2 == 0)
    # an unreachable goal (only off-grid errors, which the env never draws) falls back to plain greedy
    cost = np.where(reachable, np.abs(after), np.abs(after) + 10 * K * (int(n.max(initial=0)) + 1))
    return cost.argmin(-1)


def structured_demos(env_cfg: EnvConfig, num_samples: int, seed: int) -> datasets.Dataset:
    """``num_samples`` expert steps of the structured task in image mode (whole episodes, the last one
    cut at ``num_samples``), in order of episode and step."""
    import datasets

    if env_cfg.id != "structured":
        raise DemoDatasetError(f"expert demonstrations exist for env.id=structured only, not {env_cfg.id!r}")
    if num_samples < 1:
        raise DemoDatasetError(f"need num_samples >= 1, got {num_samples}")
    # the dataset is for a VLA: record the picture + instruction whatever the config's observation mode
    cfg = dataclasses.replace(env_cfg, observation="image", autoreset_mode="same_step")
    n_envs = min(_RECORD_ENVS, num_samples)
    env: StructuredTaskVectorEnv = make_env(cfg, n_envs, seed=seed)
    obs, _ = env.reset(seed=seed)
    # the steps of each env's running episode, flushed into `episodes` when it ends
    running: list[list[tuple[np.ndarray, str, np.ndarray]]] = [[] for _ in range(n_envs)]
    episodes: list[tuple[list[tuple[np.ndarray, str, np.ndarray]], bool]] = []
    recorded = 0
    while recorded < num_samples:
        bins = expert_bins(env, env._err, env.spec.horizon - env._t)
        moves = env.moves(bins)
        for i in range(n_envs):
            running[i].append((obs["image"][i].copy(), str(obs["instruction"][i]), moves[i]))
        obs, _, terminated, truncated, info = env.step(bins)
        for i in np.flatnonzero(terminated | truncated):
            episodes.append((running[i], bool(info["success"][i])))
            recorded += len(running[i])
            running[i] = []
    rows: dict[str, list] = {"image": [], "instruction": [], "action": [], "episode_index": [], "success": []}
    for index, (steps, success) in enumerate(episodes):
        for image, instruction, action in steps:
            if len(rows["action"]) == num_samples:
                break
            rows["image"].append(image)
            rows["instruction"].append(instruction)
            rows["action"].append(action.astype(np.float32).tolist())
            rows["episode_index"].append(index)
            rows["success"].append(success)
    features = datasets.Features({
        "image": datasets.Image(),
        "instruction": datasets.Value("string"),
        "action": datasets.List(datasets.Value("float32"), length=cfg.action_dims),
        "episode_index": datasets.Value("int64"),
        "success": datasets.Value("bool"),
    })
    return datasets.Dataset.from_dict(rows, features=features)


def _tasks_of(env_cfg: EnvConfig) -> list[str]:
    """The tasks ``env.task`` names: a simulator module's ``resolve_tasks`` (MT10 -> 10 tasks), else itself."""
    import importlib

    module = importlib.import_module(f"{__package__}.{env_cfg.id}")
    resolve = getattr(module, "resolve_tasks", None)
    return list(resolve(env_cfg.task)) if resolve is not None else [env_cfg.task]


def record_demos(cfg: TrainConfig, progress: bool = True) -> datasets.Dataset:
    """Expert demonstrations of ``cfg.env``: ``demos.num_episodes`` episodes per task (successful ones only
    unless ``demos.keep_failed``), envs seeded from ``demos.seed``; one row per step with ``image``,
    ``instruction``, ``action`` (the executed continuous action), ``success``, ``episode_index`` (and
    ``state`` with ``env.state_obs``). ``env.id=structured`` records ``sft.max_samples`` steps instead."""
    import datasets
    from tqdm.auto import tqdm

    if cfg.env.id == "structured":
        return structured_demos(cfg.env, cfg.sft.max_samples or DEFAULT_STRUCTURED_STEPS, cfg.demos.seed)
    n_episodes = cfg.demos.num_episodes
    if n_episodes < 1:
        raise DemoDatasetError(f"need demos.num_episodes >= 1, got {n_episodes}")
    # the dataset is for a VLA: pictures + instructions whatever the recipe's observation mode
    base = dataclasses.replace(cfg.env, observation="image", autoreset_mode="same_step")
    tasks = _tasks_of(base)
    rows: dict[str, list] = {"image": [], "instruction": [], "action": [], "episode_index": [], "success": []}
    if base.state_obs:
        rows["state"] = []
    kept = failed = 0
    bar = tqdm(total=len(tasks) * n_episodes, desc="expert demos", unit="episode", disable=not progress)
    for task in tasks:
        n_envs = max(1, min(cfg.env.num_envs, n_episodes))
        env = make_env(dataclasses.replace(base, task=task), n_envs, seed=cfg.demos.seed)
        if not hasattr(env, "expert_bins"):
            env.close()
            raise DemoDatasetError(f"env.id={cfg.env.id!r} has no scripted expert (no expert_bins()); record "
                                   "demonstrations another way and point sft.dataset at them")
        low, high = (np.asarray(b, np.float64) for b in env.action_bounds)
        K = cfg.env.num_bins
        try:
            obs, _ = env.reset(seed=cfg.demos.seed)
            running: list[list[tuple]] = [[] for _ in range(n_envs)]
            done_here = 0
            while done_here < n_episodes:
                bins = np.asarray(env.expert_bins(), np.int64)
                actions = low + (high - low) * bins / (K - 1)  # what the env executes (its bin grid)
                for i in range(n_envs):
                    state = obs["state"][i].copy() if base.state_obs else None
                    running[i].append((obs["image"][i].copy(), str(obs["instruction"][i]), actions[i], state))
                obs, _, terminated, truncated, info = env.step(bins)
                for i in np.flatnonzero(np.asarray(terminated) | np.asarray(truncated)):
                    steps, running[i] = running[i], []
                    if done_here == n_episodes:
                        continue  # episodes beyond the quota, finished on the same step
                    done_here += 1
                    bar.update(1)
                    success = bool(info["success"][i])
                    failed += not success
                    if not (success or cfg.demos.keep_failed):
                        continue
                    for image, instruction, action, state in steps:
                        rows["image"].append(image)
                        rows["instruction"].append(instruction)
                        rows["action"].append(action.astype(np.float32).tolist())
                        rows["episode_index"].append(kept)
                        rows["success"].append(success)
                        if state is not None:
                            rows["state"].append(np.asarray(state, np.float32).tolist())
                    kept += 1
        finally:
            env.close()
    bar.close()
    if not rows["action"]:
        raise DemoDatasetError(f"the expert succeeded in none of {failed} episodes of {cfg.env.task!r}; set "
                               "demos.keep_failed=true to keep them anyway, or raise env.max_episode_steps")
    features = {
        "image": datasets.Image(),
        "instruction": datasets.Value("string"),
        "action": datasets.List(datasets.Value("float32"), length=cfg.env.action_dims),
        "episode_index": datasets.Value("int64"),
        "success": datasets.Value("bool"),
    }
    if base.state_obs:
        features["state"] = datasets.List(datasets.Value("float32"), length=len(rows["state"][0]))
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


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
    """What a recording depends on: ``env.*`` but how it is stepped, and ``demos.*``."""
    env = {k: v for k, v in asdict(cfg.env).items() if k not in _NOT_RECORDED}
    return {"env": env, "demos": asdict(cfg.demos)}


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
    make = f"make one with `vla-structppo demos RECIPE sft.dataset={path}`"
    if not path.is_dir():
        raise DemoDatasetError(f"no demonstration dataset at {str(path)!r}; {make}")
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DemoDatasetError(f"{path} is not a dataset written by Dataset.save_to_disk ({err}); {make}") from None
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
