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
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ..bins import BinCoding, BinGrid
from .chunking import ChunkedEnv
from .contract import EnvError, EpisodeTracker, NoExpertError

__all__ = ["SimVectorEnv", "image_obs_space", "make_vector"]


def make_vector(factories: list[Callable[[], gym.Env]], vector_mode: str, chunk_size: int = 1) -> gym.vector.VectorEnv:
    """A SAME_STEP Sync or Async vector env (forkserver: a forked EGL / Vulkan context hangs); with ``chunk_size >
    1`` every single env executes chunks of that many actions (envs/chunking.py), inside its own worker."""
    if chunk_size > 1:
        factories = [partial(_chunked, f, chunk_size) for f in factories]
    if vector_mode == "sync":
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    if vector_mode == "async":
        return gym.vector.AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, context="forkserver")
    raise ValueError(f"vector_mode must be 'sync' or 'async', got {vector_mode!r}")


def _chunked(factory: Callable[[], gym.Env], chunk_size: int) -> gym.Env:
    return ChunkedEnv(factory(), chunk_size)


def image_obs_space(size: int, state_dim: int | None, views: int = 1) -> gym.spaces.Dict:
    """A single env's image observation: the picture (``views > 1``: several, ``[V, S, S, 3]``) and the
    proprioceptive state."""
    shape = (size, size, 3) if views == 1 else (views, size, size, 3)
    spaces: dict[str, gym.Space] = {"image": gym.spaces.Box(0, 255, shape, np.uint8)}
    if state_dim is not None:
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    return gym.spaces.Dict(spaces)


class SimVectorEnv(gym.vector.VectorEnv):
    """``inner``: a vector env of single simulator envs (continuous actions); see the module doc.

    ``task_labels`` / ``instructions``: one per env. ``has_expert``: the single envs have
    ``expert_action()``. ``reset()`` without a seed uses ``seed`` the first time (env i gets
    ``seed + i``, gymnasium's convention). ``chunk_size``: the single envs execute chunks of that many
    actions (``inner`` built by :func:`make_vector` with the same ``chunk_size``); actions are then ``int [N, H * D]``
    and a step returns the chunk's entries of envs/chunking.py."""

    def __init__(self, inner: gym.vector.VectorEnv, bounds: tuple[Sequence[float], Sequence[float]],
                 num_bins: int, *, task_labels: Sequence[str], instructions: Sequence[str],
                 has_expert: bool, seed: int | None = None, chunk_size: int = 1) -> None:
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
        self.chunk_size = chunk_size
        D = self.grid.action_dims * chunk_size
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

    # every simulator here restarts alike from equal seeds (a LIBERO env picks its fixed init state from the seed
    # when ``options={"repeat": True}``): GRPO's groups
    repeatable_resets = True

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """``seed``: one int (env i gets ``seed + i``) or one per env; ``options={"repeat": True}`` (GRPO): envs
        reset with equal seeds start from equal initial states."""
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        obs, _ = self._inner.reset(seed=seed, options=options)
        self._episodes.reset()
        return self._wrap(obs), {"success": np.zeros(self.num_envs, dtype=bool)}

    def record_frames(self, on: bool) -> None:
        """Chunks: return the pictures after each chunk's inner steps (``info["chunk_frames"]``, for videos)."""
        if self.chunk_size > 1:
            self._inner.call("record_frames", on)

    def step(self, actions):
        bins = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        if self.chunk_size > 1:
            bins = bins.reshape(self.num_envs, self.chunk_size, -1)  # [N, H, D]: H actions executed in turn
        return self._execute(self.decode(bins))

    def step_normalized(self, actions: np.ndarray):
        """Execute normalised continuous actions ``[N, (H,) D]`` in [-1, 1] (a regression head's, OpenVLA-OFT's L1
        head), un-normalised with the coding's statistics, instead of bins."""
        x = np.asarray(actions, np.float64).reshape(self.num_envs, -1)
        if self.chunk_size > 1:
            x = x.reshape(self.num_envs, self.chunk_size, -1)
        return self._execute(self.coding.unnormalize(x))

    def _execute(self, continuous: np.ndarray):
        obs, reward, terminated, truncated, inner_info = self._inner.step(np.asarray(continuous, np.float32))
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        reward = np.asarray(reward, np.float64)
        done = terminated | truncated
        out = self._wrap(obs)
        # same-step autoreset: an ended row's info is the reset's; the step's is in final_info
        success = np.asarray(inner_info.get("success", np.zeros(self.num_envs)), bool) & ~done
        info: dict[str, Any] = {"success": success}
        final = inner_info.get("final_info", {}) if done.any() else {}
        if done.any():
            if "success" in final:
                success |= np.asarray(final["success"], bool) & done
            info["final_obs"] = self._final_obs(out, inner_info["final_obs"], done)
            info["_final_obs"] = done.copy()
        steps = None
        if self.chunk_size > 1:  # the executed steps' entries: of the step itself on the rows that reset
            for key in ("chunk_rewards", "chunk_steps", "chunk_frames"):
                if key in inner_info or key in final:
                    info[key] = _step_rows(inner_info.get(key), final.get(key), done)
            steps = info["chunk_steps"]
        self._episodes.step(reward, done, info, steps=steps)
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
        if self.chunk_size > 1:
            raise NoExpertError("the scripted experts act one step at a time: record demonstrations and evaluate the "
                                "expert on the unchunked env (action.chunk_size=1); SFT builds chunks from them")
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


def _step_rows(current: np.ndarray | None, final: np.ndarray | None, done: np.ndarray) -> np.ndarray:
    """A per-env info entry with the rows that reset on this step taken from gymnasium's ``final_info`` (the reset's
    info replaced the step's there; when every row reset, only ``final_info`` has the entry)."""
    out = np.zeros_like(final) if current is None else np.array(current, copy=True)
    if final is not None and done.any():
        out[done] = np.asarray(final)[done]
    return out
