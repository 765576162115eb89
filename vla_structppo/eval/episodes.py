"""The evaluation loop: exactly ``num_episodes`` episodes per task on fixed seeds, counted in fixed slots.

Each task's episodes are *slots*: episode k of the task's env j fills slot ``k * E + j`` (E envs run the
task), so the counted episodes do not depend on which envs happen to finish first (counting the first
completions would favour short episodes, i.e. early successes). The global RNG streams are restored
afterwards, so an evaluation during training leaves training bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import ConfigError, EnvConfig
from ..envs import NoExpertError, make_env, take_obs
from .stats import summarize
from .video import safe_name, write_video

if TYPE_CHECKING:
    from ..policies.agent import Agent

__all__ = ["evaluate_policy", "preserve_rng"]


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and python RNG states on exit."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _check_obs_width(agent: Agent, envs) -> None:
    want = getattr(agent.policy, "obs_dim", None)  # the state policies; a VLA reads pictures
    space = envs.single_observation_space
    if want is not None and getattr(space, "shape", None) and space.shape[0] != want:
        raise ConfigError(f"the policy reads {want}-wide state vectors but this env gives {space.shape[0]}: "
                          "evaluate on the env the checkpoint was trained on (same env.action_dims / task)")


class _Slots:
    """Which slot of which task every env's current episode fills, and the finished episodes' records
    ``(success, length, return)`` by task and slot."""

    def __init__(self, labels: list[str], num_episodes: int) -> None:
        self.labels, self.num_episodes = labels, num_episodes
        self.tasks = list(dict.fromkeys(labels))
        self.width = {t: labels.count(t) for t in self.tasks}
        n = len(labels)
        self.pos = np.array([labels[:i].count(labels[i]) for i in range(n)])
        self.records: dict[str, dict[int, tuple[bool, float, float]]] = {t: {} for t in self.tasks}
        self.done_eps = np.zeros(n, dtype=np.int64)
        self.ever = np.zeros(n, dtype=bool)  # the episode succeeded at some step
        self.steps = np.zeros(n, dtype=np.int64)
        self.ret = np.zeros(n, dtype=np.float64)

    def slot(self, i: int) -> int:
        return int(self.done_eps[i]) * self.width[self.labels[i]] + int(self.pos[i])

    @property
    def full(self) -> bool:
        return all(len(self.records[t]) >= self.num_episodes for t in self.tasks)

    @property
    def rounds(self) -> int:
        """Episodes an env may have to run: its share of the quota, +1 for a partial round."""
        return max(math.ceil(self.num_episodes / w) for w in self.width.values()) + 1

    def step(self, reward: np.ndarray, info: dict[str, Any]) -> None:
        self.steps += 1
        self.ret += np.asarray(reward, dtype=np.float64)
        if "success" in info:
            self.ever |= np.asarray(info["success"], dtype=bool)

    def finish(self, i: int, info: dict[str, Any]) -> int | None:
        """Env ``i``'s episode ended on this step: record it if its slot counts; returns that slot (or None)."""
        s, task = self.slot(i), self.labels[i]
        counted = s < self.num_episodes
        if counted:
            ep = info.get("_episode")
            own = ep is not None and bool(ep[i])
            length = float(info["episode_length"][i]) if own and "episode_length" in info else float(self.steps[i])
            total = float(info["episode_return"][i]) if own and "episode_return" in info else float(self.ret[i])
            self.records[task][s] = (bool(self.ever[i]), length, total)
        self.done_eps[i] += 1
        self.ever[i], self.steps[i], self.ret[i] = False, 0, 0.0
        return s if counted else None

    def summaries(self) -> dict[str, Any]:
        per_task = {}
        pooled: tuple[list[bool], list[float], list[float]] = ([], [], [])
        for t in self.tasks:
            eps = [self.records[t][s] for s in sorted(self.records[t])]  # slot order: not finishing order
            cols = [list(c) for c in zip(*eps)]
            per_task[t] = summarize(*cols)
            for dst, src in zip(pooled, cols):
                dst.extend(src)
        return {"tasks": per_task, "overall": summarize(*pooled)}


class _Films:
    """The frames of the first ``videos`` slots of every task, written as MP4 when their episode ends."""

    def __init__(self, slots: _Slots, videos: int, video_dir: Path | None, prefix: str) -> None:
        self.slots, self.limit, self.dir, self.prefix = slots, min(videos, slots.num_episodes), video_dir, prefix
        self.frames: dict[int, list[np.ndarray]] = {}
        self.paths: list[str] = []

    def add(self, obs: Any) -> None:
        for i in range(len(self.slots.labels)):
            if self.slots.slot(i) < self.limit:
                self.frames.setdefault(i, []).append(_main_view(obs["image"][i]))

    def add_chunk(self, info: dict[str, Any]) -> None:
        """Action chunks: the pictures after the chunk's inner steps, so the video has one frame per env step."""
        if "chunk_frames" not in info:
            return
        for i in list(self.frames):
            executed = int(info["chunk_steps"][i])
            self.frames[i].extend(_main_view(f) for f in info["chunk_frames"][i][:executed - 1])

    def finish(self, i: int, slot: int | None, info: dict[str, Any]) -> None:
        frames = self.frames.pop(i, None)
        if frames is None or slot is None:
            return
        final = info.get("final_obs")
        if final is not None:
            frames.append(_main_view(take_obs(final, np.array([i]))["image"][0]))
        name = f"{self.prefix}_{safe_name(self.slots.labels[i])}_ep{slot:03d}.mp4"
        write_video(Path(self.dir) / name, frames)  # type: ignore[arg-type]
        self.paths.append(name)


def _main_view(image: Any) -> np.ndarray:
    """The picture a video shows: the main camera's when an observation has several (``[V, H, W, 3]``)."""
    image = np.asarray(image)
    return (image if image.ndim == 3 else image[0]).copy()


def _open_envs(agent: Agent | None, env_cfg: EnvConfig, num_envs: int, seed: int, expert: bool):
    """The evaluation's envs, decoding and normalising as ``agent`` was trained (checked against the contract);
    a chunked policy's envs execute its chunks (the scripted expert acts one step at a time)."""
    from gymnasium.vector import AutoresetMode

    chunk = 1 if expert or agent is None else int(getattr(agent.policy, "chunk_size", 1))
    envs = make_env(env_cfg, num_envs, seed=seed, chunk_size=chunk)
    try:
        if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) != AutoresetMode.SAME_STEP:
            raise ValueError(f"env {env_cfg.id!r} does not autoreset on the same step (the env contract)")
        if expert and not envs.has_expert:
            raise NoExpertError(f"env.id={env_cfg.id!r} has no scripted expert; set eval.expert=false")
        if agent is not None:  # its bins decoded as it means them, observations as it saw them
            agent.configure_env(envs, evaluation=True)
        if agent is not None and not expert:
            _check_obs_width(agent, envs)
    except BaseException:
        envs.close()
        raise
    return envs


def evaluate_policy(agent: Agent | None, env_cfg: EnvConfig, *, num_episodes: int, seed: int, num_envs: int,
                    deterministic: bool = True, temperature: float = 1.0, videos: int = 0,
                    video_dir: str | Path | None = None, expert: bool = False,
                    video_prefix: str = "policy") -> dict[str, Any]:
    """Run exactly ``num_episodes`` episodes per task with ``agent`` (or the scripted expert) on seeds
    from ``seed``; returns ``{"tasks": {task: summary}, "overall": summary, "videos": [paths]}``.

    A summary: ``success_rate, ci95 [lo, hi], episodes, successes, mean_length, mean_return``. An
    episode succeeds if ``info["success"]`` was true at any of its steps (the MetaWorld / LIBERO
    convention). Videos: the first ``videos`` slots of every task, from ``obs["image"]``.
    """
    if num_episodes < 1 or num_envs < 1:
        raise ValueError("num_episodes and num_envs must be >= 1")
    if agent is None and not expert:
        raise ValueError("give an agent, or expert=True")
    # the harness reads episode ends on the done step; the task itself is unchanged
    env_cfg = dataclasses.replace(env_cfg, structured=dataclasses.replace(env_cfg.structured,
                                                                          autoreset_mode="same_step"))
    was_training = agent.training if agent is not None else False
    with preserve_rng(), torch.no_grad():
        _seed_all(seed)
        envs = _open_envs(agent, env_cfg, num_envs, seed, expert)
        try:
            if agent is not None and not expert:
                agent.eval()
            slots = _Slots(list(envs.task_labels), num_episodes)
            obs, _ = envs.reset(seed=seed)
            has_image = isinstance(obs, dict) and "image" in obs
            if videos > 0 and not has_image:
                warnings.warn("videos need image observations (env.observation=image): none recorded", stacklevel=2)
            films = _Films(slots, videos, Path(video_dir) if video_dir is not None else None, video_prefix)
            record = videos > 0 and has_image and video_dir is not None
            if record and hasattr(envs, "record_frames"):
                envs.record_frames(True)
            max_steps = slots.rounds * (env_cfg.episode_limit + 1) * 4  # generous: the longest episodes, 4x over
            for _ in range(max_steps):
                if slots.full:
                    break
                if record:
                    films.add(obs)
                obs, reward, terminated, truncated, info = _step(agent, envs, obs, expert, deterministic, temperature)
                if record:
                    films.add_chunk(info)
                slots.step(reward, info)
                for i in np.nonzero(np.asarray(terminated, bool) | np.asarray(truncated, bool))[0]:
                    films.finish(i, slots.finish(i, info), info)
            short = {t: len(r) for t, r in slots.records.items() if len(r) < num_episodes}
            if short:
                raise RuntimeError(f"evaluation did not finish {num_episodes} episodes per task within {max_steps} "
                                   f"steps (finished: {short}); do the env's episodes end?")
        finally:
            envs.close()
            if agent is not None and was_training:
                agent.train()
    return {**slots.summaries(), "videos": sorted(films.paths)}


def _step(agent: Agent | None, envs, obs: Any, expert: bool, deterministic: bool, temperature: float):
    """One env step with the expert's or the policy's action (a regression head's continuous actions when it has
    one, OpenVLA-OFT's L1 head, else its bins)."""
    if expert:
        return envs.step(np.asarray(envs.expert_bins()))
    policy = agent.policy  # type: ignore[union-attr]
    out = policy.act(policy.prepare(obs), deterministic=deterministic, temperature=temperature)
    if out.continuous is not None:
        return envs.step_normalized(out.continuous.cpu().numpy())
    return envs.step(out.actions.cpu().numpy())
