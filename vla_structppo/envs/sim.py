"""The env contract on top of a gymnasium Sync/AsyncVectorEnv of single simulator envs.

Every simulator adapter (MetaWorld, LIBERO, ManiSkill3) writes only a *single* gymnasium env that takes
a continuous action and returns its own picture (``{"image"[, "state"]}``) or state vector, with
``info["success"]`` and its own time limit, plus optionally ``expert_action()`` (a scripted expert's
continuous action). :class:`SimVectorEnv` does the rest once for all of them: bins in (decoded on the
:class:`~vla_structppo.bins.BinGrid` of the simulator's action bounds), the instruction of every env,
``success`` of the step that ended an episode (gymnasium reports the reset's info there), episode
bookkeeping, ``final_obs`` in the batched layout, ``task_labels`` and the expert's bins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ..bins import BinCoding, BinGrid
from .contract import EnvError, EpisodeTracker, NoExpertError

__all__ = ["SimVectorEnv", "image_obs_space", "make_vector"]


def make_vector(factories: list[Callable[[], gym.Env]], vector_mode: str) -> gym.vector.VectorEnv:
    """A SAME_STEP Sync or Async vector env (forkserver: a forked EGL / Vulkan context hangs)."""
    if vector_mode == "sync":
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    if vector_mode == "async":
        return gym.vector.AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, context="forkserver")
    raise ValueError(f"vector_mode must be 'sync' or 'async', got {vector_mode!r}")


def image_obs_space(size: int, state_dim: int | None) -> gym.spaces.Dict:
    """A single env's image observation: the picture (and the proprioceptive state)."""
    spaces: dict[str, gym.Space] = {"image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8)}
    if state_dim is not None:
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    return gym.spaces.Dict(spaces)


class SimVectorEnv(gym.vector.VectorEnv):
    """``inner``: a vector env of single simulator envs (continuous actions); see the module doc.

    ``task_labels`` / ``instructions``: one per env. ``has_expert``: the single envs have
    ``expert_action()``. ``reset()`` without a seed uses ``seed`` the first time (env i gets
    ``seed + i``, gymnasium's convention)."""

    def __init__(self, inner: gym.vector.VectorEnv, bounds: tuple[Sequence[float], Sequence[float]],
                 num_bins: int, *, task_labels: Sequence[str], instructions: Sequence[str],
                 has_expert: bool, seed: int | None = None) -> None:
        self._inner = inner
        self.num_envs = inner.num_envs
        if len(task_labels) != self.num_envs or len(instructions) != self.num_envs:
            raise ValueError(f"need one task label and instruction per env ({self.num_envs})")
        self.grid = BinGrid(bounds[0], bounds[1], num_bins)
        self.coding: BinCoding = self.grid  # how bins become actions: the grid, until a policy brings its own
        self.task_labels = [str(t) for t in task_labels]
        self.instructions = np.array([str(s) for s in instructions])
        self.has_expert = has_expert
        self._first_seed = seed
        self._episodes = EpisodeTracker(self.num_envs)
        D = self.grid.action_dims
        self.single_action_space = gym.spaces.MultiDiscrete([num_bins] * D)
        self.action_space = gym.spaces.MultiDiscrete(np.full((self.num_envs, D), num_bins))
        single = inner.single_observation_space
        self.images = isinstance(single, gym.spaces.Dict)
        if self.images:
            single = gym.spaces.Dict({**single.spaces, "instruction": gym.spaces.Text(max_length=512)})
        self.single_observation_space = single
        self.observation_space = batch_space(single, self.num_envs)
        self.metadata = {**inner.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}

    @property
    def action_bounds(self) -> tuple[list[float], list[float]]:
        return self.grid.low.tolist(), self.grid.high.tolist()

    def set_coding(self, coding: BinCoding) -> None:
        """Decode bins (and encode the expert's actions) with a policy's own coding, e.g. OpenVLA's bin centres
        and dataset statistics, instead of the uniform grid over the simulator's bounds."""
        if coding.action_dims != self.grid.action_dims or coding.num_bins != self.grid.num_bins:
            raise EnvError(f"the policy codes {coding.action_dims} dims x {coding.num_bins} bins; this env takes "
                           f"{self.grid.action_dims} x {self.grid.num_bins} (env.action_dims, env.num_bins)")
        self.coding = coding

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bins ``[..., D]`` -> the continuous actions the simulator executes."""
        return self.coding.decode(bins)

    # -- gymnasium API ----------------------------------------------------------------------------
    def _wrap(self, obs: Any) -> Any:
        if not self.images:
            return np.asarray(obs, np.float32)
        out = {k: np.asarray(v) for k, v in obs.items()}
        out["instruction"] = self.instructions.copy()
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        obs, _ = self._inner.reset(seed=seed, options=options)
        self._episodes.reset()
        return self._wrap(obs), {"success": np.zeros(self.num_envs, dtype=bool)}

    def step(self, actions):
        bins = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        obs, reward, terminated, truncated, inner_info = self._inner.step(self.decode(bins).astype(np.float32))
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        reward = np.asarray(reward, np.float64)
        done = terminated | truncated
        out = self._wrap(obs)
        # same-step autoreset: an ended row's info is the reset's; the step's is in final_info
        success = np.asarray(inner_info.get("success", np.zeros(self.num_envs)), bool) & ~done
        info: dict[str, Any] = {"success": success}
        if done.any():
            final = inner_info.get("final_info", {})
            if "success" in final:
                success |= np.asarray(final["success"], bool) & done
            info["final_obs"] = self._final_obs(out, inner_info["final_obs"], done)
            info["_final_obs"] = done.copy()
        self._episodes.step(reward, done, info)
        return out, reward, terminated, truncated, info

    def _final_obs(self, current: Any, finals: np.ndarray, done: np.ndarray) -> Any:
        """All N rows: the last observation of the episodes that ended, the current one elsewhere."""
        if not self.images:
            out = current.copy()
            for i in np.flatnonzero(done):
                out[i] = np.asarray(finals[i], np.float32)
            return out
        out = {k: v.copy() for k, v in current.items()}
        for i in np.flatnonzero(done):
            for k, v in finals[i].items():
                out[k][i] = v
        return out

    def expert_bins(self) -> np.ndarray:
        """The scripted expert's action for every env's current state, as the nearest bins ``int [N, D]``."""
        if not self.has_expert:
            raise NoExpertError("this environment has no scripted expert: record demonstrations another way "
                                "(or convert a dataset) and point sft.dataset at them")
        return self.coding.encode(np.stack(self._inner.call("expert_action")))

    def get_state(self) -> None:
        """Simulator states are not saved: a resumed run starts fresh episodes."""
        return None

    def set_state(self, state: Any) -> None:
        raise ValueError("simulator env states cannot be restored (get_state() is None)")

    def render(self) -> np.ndarray:
        """Every env's current picture ``uint8 [N, H, W, 3]`` (videos, whatever the observation mode)."""
        return np.stack(self._inner.call("render"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        return self._inner.call(name, *args, **kwargs)

    def close(self, **kwargs: Any) -> None:
        self._inner.close(**kwargs)
