"""Record expert demonstrations into the dataset format of :mod:`vla_structppo.data.demos`.

:func:`record_demos` records ``demos.num_episodes`` episodes per task of any env with a scripted expert
(``has_expert``: MetaWorld, ManiSkill3, the structured task), from seed ``demos.seed`` on; ``action`` is
the decoded expert bin, i.e. exactly what the env executed, and ``state`` (the robot's proprioception)
is added with ``env.state_obs``. For ``env.id=structured`` it records ``sft.max_samples`` steps of the
exact expert (:func:`~vla_structppo.envs.structured.optimal_bins`) with :func:`structured_demos`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..config import EnvConfig, TrainConfig
from ..envs import StructuredTaskVectorEnv, make_env, tasks_of
from .demos import DemoDatasetError

if TYPE_CHECKING:
    import datasets

__all__ = ["record_demos", "structured_demos"]

# envs stepped in parallel while recording the structured task (numpy: more only costs memory)
_RECORD_ENVS = 64
# structured task steps recorded by record_demos when sft.max_samples is 0 (the CLI's default)
DEFAULT_STRUCTURED_STEPS = 256


def structured_demos(env_cfg: EnvConfig, num_samples: int, seed: int) -> datasets.Dataset:
    """``num_samples`` expert steps of the structured task in image mode (whole episodes, the last one
    cut at ``num_samples``), in order of episode and step."""
    import datasets

    if env_cfg.id != "structured":
        raise DemoDatasetError(f"expert demonstrations exist for env.id=structured only, not {env_cfg.id!r}")
    if num_samples < 1:
        raise DemoDatasetError(f"need num_samples >= 1, got {num_samples}")
    # the dataset is for a VLA: record the picture + instruction whatever the config's observation mode
    cfg = dataclasses.replace(env_cfg, observation="image",
                              structured=dataclasses.replace(env_cfg.structured, autoreset_mode="same_step"))
    n_envs = min(_RECORD_ENVS, num_samples)
    env: StructuredTaskVectorEnv = make_env(cfg, n_envs, seed=seed)
    obs, _ = env.reset(seed=seed)
    # the steps of each env's running episode, flushed into `episodes` when it ends
    running: list[list[tuple[np.ndarray, str, np.ndarray]]] = [[] for _ in range(n_envs)]
    episodes: list[tuple[list[tuple[np.ndarray, str, np.ndarray]], bool]] = []
    recorded = 0
    while recorded < num_samples:
        bins = env.expert_bins()
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
    base = dataclasses.replace(cfg.env, observation="image")
    rows: dict[str, list] = {"image": [], "instruction": [], "action": [], "episode_index": [], "success": []}
    if base.state_obs:
        rows["state"] = []
    kept = failed = 0
    tasks = tasks_of(base)
    bar = tqdm(total=len(tasks) * n_episodes, desc="expert demos", unit="episode", disable=not progress)
    for task_cfg in tasks:
        n_envs = max(1, min(cfg.env.num_envs, n_episodes))
        env = make_env(task_cfg, n_envs, seed=cfg.demos.seed)
        if not env.has_expert:
            env.close()
            raise DemoDatasetError(f"env.id={cfg.env.id!r} has no scripted expert; record demonstrations another "
                                   "way (or convert a dataset) and point sft.dataset at them")
        try:
            obs, _ = env.reset(seed=cfg.demos.seed)
            running: list[list[tuple]] = [[] for _ in range(n_envs)]
            done_here = 0
            while done_here < n_episodes:
                bins = np.asarray(env.expert_bins(), np.int64)
                actions = env.decode(bins)  # what the env executes
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


