"""The env contract: what every environment gives the trainer, the evaluation and the demo recorder.

An env is a gymnasium vector env of ``num_envs`` copies (docs/environments.md#the-env-contract):

* **actions** are bins ``int [N, D]``, one per action dim, each in ``0..K-1``
  (``single_action_space = MultiDiscrete([K] * D)``). A simulator decodes them to continuous actions
  with :class:`vla_structppo.bins.BinGrid` over ``action_bounds`` — the action tokenizer's grid.
* **observations** are a state vector ``float32 [N, S]`` (``observation: state``) or a dict
  ``{"image": uint8 [N, H, W, 3] upright, "instruction": str array [N][, "state": float32 [N, P]]}``
  (``observation: image``, what a VLA reads); several cameras give ``[N, V, H, W, 3]``, the main one first.
* **action chunks** (``make_env(..., chunk_size=H)``, envs/chunking.py): actions are ``int [N, H * D]``, executed
  open loop; ``info`` adds ``chunk_rewards [N, H]`` and ``chunk_steps [N]``.
* ``repeatable_resets`` (GRPO): ``reset(seed=[s_0 .. s_{N-1}], options={"repeat": True})`` starts envs with equal
  seeds from equal initial states.
* **info** on every step: ``success`` ``bool [N]`` (whether the step solved the task; on a row whose
  episode ended, that final step's); on steps where episodes end, ``episode_return`` /
  ``episode_length`` and the mask ``_episode``; with same-step autoreset, ``final_obs`` (all N rows
  in the batched layout; ended rows hold the episode's last observation) and ``_final_obs``.
* ``metadata["autoreset_mode"]``: ``SAME_STEP`` (every simulator) or ``NEXT_STEP`` (the structured task
  can do both; the step after a done is a reset and is masked out of training).
* ``task_labels``: the task of every env (``[N]`` str) — multi-task envs (MT10, a LIBERO suite) give
  each env's own task, so evaluations report one row per task.
* ``action_bounds``: ``(low [D], high [D])`` of the continuous actions the bins decode to;
  ``decode(bins)``: those actions; ``set_coding(coding)``: decode with a policy's own coding instead (a
  VLA's action tokenizer, e.g. OpenVLA's; the structured task's bins are its moves and ignore it).
* ``has_expert`` / ``expert_bins()``: a scripted expert's bins for the current state (demos, eval).
* ``get_state()`` / ``set_state()``: everything needed to continue bit-exactly (checkpoints), or
  ``get_state() -> None`` when the simulator cannot save its state (resumed runs start fresh episodes).

:func:`check_env` checks an instance against this list (the tests run it on every env).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from gymnasium.vector import AutoresetMode

from ..errors import UserError

__all__ = ["BinVectorEnv", "EnvError", "EpisodeTracker", "NoExpertError", "SimulatorMissingError", "check_env",
           "map_obs", "take_obs"]


class EnvError(UserError, ValueError):
    """An env setting the simulator cannot run (unknown task or camera, wrong action dims ...)."""


class SimulatorMissingError(UserError, ModuleNotFoundError):
    """The simulator is not installed in this interpreter; the message names the setup script."""


class NoExpertError(UserError, RuntimeError):
    """The env has no scripted expert; the message says what to do instead."""


class BinVectorEnv(Protocol):
    """The contract (module doc). Implemented by StructuredTaskVectorEnv and SimVectorEnv."""

    num_envs: int
    metadata: dict[str, Any]
    task_labels: list[str]
    has_expert: bool

    @property
    def action_bounds(self) -> tuple[list[float], list[float]]: ...

    def decode(self, bins: np.ndarray) -> np.ndarray: ...

    def set_coding(self, coding: Any) -> None: ...

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]: ...

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def expert_bins(self) -> np.ndarray: ...

    def get_state(self) -> dict[str, Any] | None: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# -- observations ----------------------------------------------------------------------------------
def map_obs(obs: Any, fn) -> Any:
    """``fn`` applied to the array (or every array of a dict observation)."""
    if isinstance(obs, dict):
        return {k: fn(np.asarray(v)) for k, v in obs.items()}
    return fn(np.asarray(obs))


def take_obs(obs: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a batched observation (an array or a dict of arrays)."""
    return map_obs(obs, lambda v: v[idx])


# -- episode bookkeeping ---------------------------------------------------------------------------
class EpisodeTracker:
    """Running return and length of every env's episode, and the ``info`` entries of the contract on
    the steps where episodes end (shared by the simulator adapters)."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.copy(), "lengths": self.lengths.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns[:] = np.asarray(state["returns"])
        self.lengths[:] = np.asarray(state["lengths"])

    def step(self, reward: np.ndarray, done: np.ndarray, info: dict[str, Any], steps: np.ndarray | None = None) -> None:
        """Count one step (``steps [N]`` env steps for action chunks); on ``done`` rows write ``episode_return`` /
        ``episode_length`` / ``_episode`` into ``info`` and start those rows afresh."""
        self.returns += reward
        self.lengths += 1 if steps is None else np.asarray(steps, np.int64)
        if done.any():
            info["episode_return"] = np.where(done, self.returns, 0.0)
            info["episode_length"] = np.where(done, self.lengths, 0)
            info["_episode"] = done.copy()
            self.returns[done] = 0.0
            self.lengths[done] = 0


# -- checking an env against the contract ----------------------------------------------------------
def check_env(envs: BinVectorEnv, steps: int = 3) -> None:
    """Reset and step ``envs`` with random bins, asserting the contract (module doc); raises
    ``AssertionError`` naming the first broken clause."""
    n = envs.num_envs
    space = envs.single_action_space  # type: ignore[attr-defined]
    K, D = int(space.nvec[0]), len(space.nvec)
    low, high = envs.action_bounds
    assert len(low) == len(high) == D, f"action_bounds have {len(low)}/{len(high)} entries for {D} dims"
    labels = list(envs.task_labels)
    assert len(labels) == n and all(isinstance(t, str) and t for t in labels), f"task_labels: {labels!r}"
    assert isinstance(envs.has_expert, bool), "has_expert must be a bool"
    mode = envs.metadata.get("autoreset_mode")
    assert mode in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP), f"metadata autoreset_mode: {mode!r}"
    obs, _ = envs.reset(seed=0)
    _check_obs(obs, n)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, reward, terminated, truncated, info = envs.step(rng.integers(0, K, size=(n, D)))
        _check_obs(obs, n)
        assert np.shape(reward) == (n,) and np.shape(terminated) == (n,) and np.shape(truncated) == (n,)
        success = np.asarray(info["success"])
        assert success.shape == (n,) and success.dtype == bool, "info['success'] must be bool [N]"
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        if done.any():
            assert np.array_equal(info["_episode"], done), "info['_episode'] must mark the ended rows"
            assert "episode_return" in info and "episode_length" in info
            if mode == AutoresetMode.SAME_STEP:
                _check_obs(info["final_obs"], n)
    if envs.has_expert:
        bins = np.asarray(envs.expert_bins())
        assert bins.shape == (n, D) and bins.min() >= 0 and bins.max() < K, f"expert_bins: {bins.shape}"


def _check_obs(obs: Any, n: int) -> None:
    if isinstance(obs, dict):
        image = np.asarray(obs["image"])
        assert image.dtype == np.uint8 and image.ndim in (4, 5) and image.shape[0] == n and image.shape[-1] == 3, \
            f"obs['image'] must be uint8 [N, H, W, 3] (or [N, V, H, W, 3] for V views), got {image.dtype} {image.shape}"
        instructions = np.asarray(obs["instruction"])
        assert instructions.shape == (n,) and instructions.dtype.kind == "U", "obs['instruction'] must be str [N]"
        if "state" in obs:
            assert np.asarray(obs["state"]).dtype == np.float32 and len(obs["state"]) == n
    else:
        a = np.asarray(obs)
        assert a.dtype == np.float32 and a.ndim == 2 and a.shape[0] == n, f"state obs must be float32 [N, S]: {a.shape}"
