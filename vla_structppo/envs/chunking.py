"""Action chunks executed open loop (``action.chunk_size: H``): one decision = H env steps.

A chunked policy (OpenVLA-OFT: 8 steps x 7 dims) emits ``H x A`` bins at once; the env executes the H actions
one after the other without asking the policy again, and the decision ends early when the episode does
(termination or time limit inside the chunk: the remaining actions are dropped, as OFT's evaluation does).
What a decision returns, on top of the env contract (envs/contract.py):

* ``reward``: the undiscounted sum of the executed steps' rewards (the env's units, what episode returns add up);
* ``info["chunk_rewards"] float [N, H]``: each step's reward, 0 after the last executed step — the trainer
  discounts them into the decision's reward (``algo.chunk_return``);
* ``info["chunk_steps"] int [N]``: how many steps were executed (H unless the episode ended inside the chunk);
  GAE discounts the next decision's value by ``gamma ** chunk_steps``;
* ``info["success"]``: whether any executed step solved the task;
* ``info["chunk_frames"] uint8 [N, H - 1, S, S, 3]`` (only after ``record_frames(True)``, for videos): the
  pictures after the chunk's inner steps, so a video has one frame per env step.

Two executors with the same semantics: :class:`ChunkedEnv` wraps a *single* simulator env (each worker of an
async vector env runs its whole chunk in parallel with the others), :class:`ChunkedVectorEnv` wraps a natively
vectorised env that can step a subset of its envs (the structured task).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["ChunkedEnv", "ChunkedVectorEnv"]


class ChunkedEnv(gym.Wrapper):
    """A single env taking a continuous chunk ``[H, A]``; see the module doc."""

    def __init__(self, env: gym.Env, chunk_size: int) -> None:
        super().__init__(env)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        space = env.action_space
        self.action_space = gym.spaces.Box(np.tile(space.low, (chunk_size, 1)), np.tile(space.high, (chunk_size, 1)),
                                           (chunk_size, *space.shape), space.dtype)
        self._record = False

    def record_frames(self, on: bool) -> None:
        """Return the pictures after the chunk's inner steps in ``info["chunk_frames"]`` (videos per env step)."""
        self._record = bool(on)

    def step(self, chunk: np.ndarray):
        H = self.chunk_size
        chunk = np.asarray(chunk).reshape(H, -1)
        rewards = np.zeros(H, np.float64)
        success = False
        frames: list[np.ndarray] = []
        # an env that can skip rendering (MetaWorld) renders only the pictures somebody looks at: the chunk's last
        # observation (and every one when a video is being recorded)
        skip = hasattr(self.env.unwrapped, "render_observations") and not self._record
        for j in range(H):
            if skip:
                self.env.unwrapped.render_observations(j == H - 1)
            obs, reward, terminated, truncated, info = self.env.step(chunk[j])
            rewards[j] = float(reward)
            success |= bool(info.get("success", False))
            if terminated or truncated:
                break
            if self._record and j < H - 1:
                frames.append(np.asarray(obs["image"]).copy())
        if skip:
            self.env.unwrapped.render_observations(True)
            if j < H - 1:  # the episode ended inside the chunk: its last picture was skipped
                obs = self.env.unwrapped.observe()
        info = {**info, "success": success, "chunk_rewards": rewards, "chunk_steps": j + 1}
        if self._record:
            image = np.asarray(obs["image"])
            padded = np.zeros((H - 1, *image.shape), np.uint8)
            if frames:
                padded[:len(frames)] = np.stack(frames)
            info["chunk_frames"] = padded
        return obs, float(rewards.sum()), terminated, truncated, info


class ChunkedVectorEnv(gym.vector.VectorEnv):
    """A vector env that steps only ``active`` envs (``inner.step(actions, active=mask)``), executing chunks of
    ``chunk_size`` actions ``int [N, H * D]`` open loop; same-step autoreset only (see the module doc)."""

    def __init__(self, inner: Any, chunk_size: int) -> None:
        from gymnasium.vector import AutoresetMode

        if inner.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError("action chunks need an env that autoresets on the same step "
                             "(env.structured.autoreset_mode=same_step)")
        self._inner, self.chunk_size = inner, chunk_size
        self.num_envs = inner.num_envs
        D, K = len(inner.single_action_space.nvec), int(inner.single_action_space.nvec[0])
        self.single_action_space = gym.spaces.MultiDiscrete([K] * (chunk_size * D))
        self.action_space = gym.spaces.MultiDiscrete(np.full((self.num_envs, chunk_size * D), K))
        self.single_observation_space = inner.single_observation_space
        self.observation_space = inner.observation_space
        self.metadata = inner.metadata
        self._record = False

    def __getattr__(self, name: str) -> Any:  # the contract's other members (task_labels, expert, state ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def record_frames(self, on: bool) -> None:
        self._record = bool(on)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._inner.reset(seed=seed, options=options)

    def step(self, actions):
        N, H = self.num_envs, self.chunk_size
        chunk = np.asarray(actions, dtype=np.int64).reshape(N, H, -1)
        running = np.ones(N, bool)
        rewards = np.zeros((N, H))
        steps = np.zeros(N, np.int64)
        success, terminated, truncated = np.zeros(N, bool), np.zeros(N, bool), np.zeros(N, bool)
        ends: dict[str, Any] = {}  # the episode entries of the rows that ended, from the step they ended on
        frames = []
        for j in range(H):
            obs, reward, term, trunc, step_info = self._inner.step(chunk[:, j], active=running)
            term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
            rewards[running, j] = np.asarray(reward)[running]
            steps += running
            success |= running & np.asarray(step_info["success"], bool)
            ended = running & (term | trunc)
            terminated |= ended & term
            truncated |= ended & trunc
            _keep_episode_ends(ends, step_info, ended)
            running &= ~ended
            if self._record and j < H - 1:
                frames.append(np.asarray(obs["image"]).copy())
            if not running.any():
                break
        done = terminated | truncated
        info = {k: v for k, v in step_info.items() if k not in _PER_STEP and not k.startswith("_")}
        info.update(success=success, chunk_rewards=rewards, chunk_steps=steps)
        if done.any():
            info.update({k: v for k, v in ends.items() if k != "final_obs"}, _episode=done.copy())
            info["final_obs"] = _rows_from(obs, ends["final_obs"], done) if "final_obs" in ends else obs
            info["_final_obs"] = done.copy()
        if self._record:
            image = np.asarray(obs["image"])
            info["chunk_frames"] = np.zeros((N, H - 1, *image.shape[1:]), np.uint8)
            for j, f in enumerate(frames):
                info["chunk_frames"][:, j] = f
        return obs, rewards.sum(1), terminated, truncated, info


# per-step entries that describe one inner step (episode ends are kept per row; ground-truth reward parts are
# per step of D dims, not per decision)
_PER_STEP = ("episode_return", "episode_length", "episode_optimal", "final_obs", "reward_per_dim", "reward_pair",
             "success")


def _keep_episode_ends(ends: dict[str, Any], step_info: dict[str, Any], ended: np.ndarray) -> None:
    """For the rows that ended on this inner step, keep the episode entries of its ``info``."""
    if not ended.any():
        return
    for key in ("episode_return", "episode_length", "episode_optimal"):
        if key in step_info:
            value = np.asarray(step_info[key])
            ends.setdefault(key, np.zeros_like(value))[ended] = value[ended]
    if "final_obs" in step_info:
        final = step_info["final_obs"]
        ends["final_obs"] = _rows_from(ends.get("final_obs", final), final, ended)


def _rows_from(current: Any, finals: Any, rows: np.ndarray) -> Any:
    """``current`` (an observation array or dict of arrays) with ``rows`` taken from ``finals`` (np.where: a longer
    instruction string widens the dtype rather than being cut)."""
    if isinstance(current, dict):
        return {k: _rows_from(v, finals[k], rows) for k, v in current.items()}
    current, finals = np.asarray(current), np.asarray(finals)
    mask = rows.reshape(-1, *([1] * (current.ndim - 1)))
    return np.where(mask, finals, current)
