"""Tasks of known structure: D discrete action dims x K bins, reward = per-dim parts + pairwise parts +
noise, with the ground truth exposed so credit assignment can be measured honestly.

A point ``p in R^D`` must reach a goal ``g``; the action's bin ``k`` of dim i moves coordinate i by
``m(k) = (2k / (K-1) - 1) * max_move``. With the error ``e = p - g`` before and ``e'`` after a step::

    r = sum_i w_i (|e_i| - |e'_i|)  +  sum_{(i,j)} w_ij (|e_i - e_j| - |e'_i - e'_j|)  +  noise

The per-dim part of dim i depends on ``a^i`` only; the pairwise part of ``(i, j)`` is a true
interaction (the two dims must move together). Dims with ``w_i = 0`` outside every pair are pure
distractors. Both parts are progress on a potential, so an episode's optimal return is exactly its
initial potential ``sum_i w_i |e0_i| + sum w_ij |e0_i - e0_j|``: goals lie on the move grid and within
reach, so the potential can be brought to 0 (odd K has a 'stay' bin; with even K, such as a VLA's 256,
a goal is a sum of ``horizon`` moves).

``horizon=1`` is a contextual bandit (``p0 = 0``, the goal is the move of one bin per dim, seen in the
observation); ``horizon>1`` is a sequential task whose credit must flow through GAE; the episode is
terminated at the horizon (the task's end; ``horizon_end="truncate"`` makes it a time limit) or on success
(``terminate_on_success``).

Observation: ``[e (D), steps_left / horizon]`` as float32 (the time feature makes the horizon part of the state).
In ``observation="image"`` mode (for a VLA) the same context is a dict ``{"image": uint8 [S, S, 3],
"instruction": str}``: the picture has one vertical stripe per dim whose red level encodes ``e_i``
(128 = on target) and a green level encoding the steps left; the instruction says what to do and how
many steps remain, so prompts of one batch differ in length (as real instructions do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ..bins import BinGrid

__all__ = ["HORIZON_ENDS", "StructuredTaskSpec", "StructuredTaskVectorEnv", "optimal_bins"]

HORIZON_ENDS = ("terminate", "truncate")


@dataclass
class StructuredTaskSpec:
    """The task's structure (mirrors ``EnvConfig``; see there for the field docs)."""

    action_dims: int = 7
    num_bins: int = 11
    horizon: int = 1
    dim_weights: list[float] | None = None
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    noise_std: float = 0.0
    max_move: float | None = None
    goal_reach: float = 1.0
    terminate_on_success: bool = False
    success_tol: float = 1e-6
    num_goals: int = 0
    horizon_end: str = "terminate"

    def __post_init__(self) -> None:
        D, K = self.action_dims, self.num_bins
        if D < 1 or K < 2:
            raise ValueError(f"need action_dims >= 1 and num_bins >= 2, got D={D}, K={K}")
        if self.horizon_end not in HORIZON_ENDS:
            raise ValueError(f"horizon_end must be one of {HORIZON_ENDS}, got {self.horizon_end!r}")
        if self.dim_weights is not None and len(self.dim_weights) != D:
            raise ValueError(f"dim_weights has {len(self.dim_weights)} entries, action_dims is {D}")
        for i, j, _ in self.pairs:
            if not (0 <= i < D and 0 <= j < D and i != j):
                raise ValueError(f"pair ({i}, {j}) is not two different dims in 0..{D - 1}")
        if self.horizon < 1:
            raise ValueError("horizon must be >= 1")

    @property
    def weights(self) -> np.ndarray:
        return np.ones(self.action_dims) if self.dim_weights is None else np.asarray(self.dim_weights, float)

    @property
    def move(self) -> float:
        return self.max_move if self.max_move is not None else 1.0


class StructuredTaskVectorEnv(gym.vector.VectorEnv):
    """Natively vectorised (numpy) gymnasium vector env over ``num_envs`` copies of the task.

    ``autoreset_mode``: ``"same_step"`` (default: the reset obs comes back on the done step, the last
    one in ``info["final_obs"]``) or ``"next_step"`` (gymnasium's default: the step after a done is a
    reset step). ``info`` carries the ground truth: ``reward_per_dim [N, D]``, ``reward_pair
    [N, D, D]`` (i<j filled), ``optimal_return [N]`` (the episode's), ``success [N]`` and, on
    done steps, ``episode_return`` / ``episode_length`` / ``episode_optimal`` / ``_episode``.
    The exact expert (:func:`optimal_bins`) is ``expert_bins()``.
    """

    has_expert = True

    def __init__(self, spec: StructuredTaskSpec, num_envs: int, seed: int | None = None,
                 autoreset_mode: str = "same_step", spec_seed: int = 0, observation: str = "state",
                 image_size: int = 32) -> None:
        self.spec = spec
        self.num_envs = num_envs
        D, K = spec.action_dims, spec.num_bins
        self.single_action_space = gym.spaces.MultiDiscrete([K] * D)
        self.action_space = gym.spaces.MultiDiscrete(np.full((num_envs, D), K))
        if observation == "state":
            self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (D + 1,), np.float32)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (num_envs, D + 1), np.float32)
        elif observation == "image":
            if image_size < D:
                raise ValueError(f"image_size={image_size} is too small for one stripe per dim (D={D})")
            image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
            text = gym.spaces.Text(max_length=256)
            self.single_observation_space = gym.spaces.Dict({"image": image, "instruction": text})
            self.observation_space = gym.spaces.Dict({
                "image": gym.spaces.Box(0, 255, (num_envs, image_size, image_size, 3), np.uint8),
                "instruction": gym.spaces.Tuple([text] * num_envs)})
        else:
            raise ValueError(f"observation must be 'state' or 'image', got {observation!r}")
        self.observation_mode, self.image_size = observation, image_size
        mode = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP}.get(autoreset_mode)
        if mode is None:
            raise ValueError(f"autoreset_mode must be 'same_step' or 'next_step', got {autoreset_mode!r}")
        self.metadata = {"autoreset_mode": mode}
        self.task_labels = ["structured"] * num_envs
        self.grid = BinGrid(*self.action_bounds, K)
        self._w = spec.weights
        self._pairs = [(int(i), int(j), float(w)) for i, j, w in spec.pairs]
        self._step = 2.0 * spec.move / (K - 1)  # distance between neighbouring moves
        self._rng = np.random.default_rng(seed)
        # a fixed set of goals (the task's contexts), drawn once from its own seed
        self._goal_set = self._draw_goals(np.random.default_rng(spec_seed), spec.num_goals) if spec.num_goals else None
        self._err = np.zeros((num_envs, D))
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._ep_return = np.zeros(num_envs)
        self._ep_optimal = np.zeros(num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    # -- structure ------------------------------------------------------------------------------
    def moves(self, actions: np.ndarray) -> np.ndarray:
        """Coordinate moves of bins ``actions [..., D]`` (the bin grid over ``[-max_move, max_move]``)."""
        return self.grid.decode(actions)

    def potential_parts(self, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(per_dim [N, D], pair [N, D, D])`` of the potential at errors ``err [N, D]``."""
        per_dim = self._w * np.abs(err)
        pair = np.zeros(err.shape[:-1] + (self.spec.action_dims,) * 2)
        for i, j, w in self._pairs:
            pair[..., min(i, j), max(i, j)] += w * np.abs(err[..., i] - err[..., j])
        return per_dim, pair

    def reward_parts(self, err: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free reward parts of taking ``actions [N, D]`` at errors ``err [N, D]``."""
        before_d, before_p = self.potential_parts(err)
        after_d, after_p = self.potential_parts(err + self.moves(actions))
        return before_d - after_d, before_p - after_p

    @property
    def action_bounds(self) -> tuple[list[float], list[float]]:
        """Per-dim bounds of the moves (bin 0 moves by ``-move``, bin K-1 by ``+move``)."""
        D, move = self.spec.action_dims, self.spec.move
        return [-move] * D, [move] * D

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """The continuous moves bins stand for (the env contract's name for :meth:`moves`)."""
        return self.moves(bins)

    def set_coding(self, coding: object) -> None:
        """A policy's action coding plays no part here: this task's bins are its own moves."""

    def expert_bins(self) -> np.ndarray:
        """The exact expert's bins ``int [N, D]`` for every env's current state (:func:`optimal_bins`)."""
        return optimal_bins(self.spec, self._err, np.maximum(self.spec.horizon - self._t, 1))

    # -- gymnasium API ----------------------------------------------------------------------------
    def _draw_goals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Initial errors on the move grid, within ``goal_reach`` of what the horizon can cover."""
        spec = self.spec
        if spec.num_bins % 2:
            # odd K: a 'stay' bin exists, so any grid point within reach can be reached and held
            max_steps = int(np.floor(spec.goal_reach * spec.horizon * (spec.num_bins - 1) / 2))
            steps = rng.integers(-max_steps, max_steps + 1, size=(n, spec.action_dims))
            return steps * self._step
        # even K (a VLA's 256): no zero move; a goal is the sum of `horizon` moves, so it is reached
        # exactly at the last step (with terminate_on_success, as soon as it is reached)
        half = (spec.num_bins - 1) / 2
        lo, hi = int(np.ceil(half - spec.goal_reach * half)), int(np.floor(half + spec.goal_reach * half))
        bins = rng.integers(lo, hi + 1, size=(n, spec.horizon, spec.action_dims))
        return -self.moves(bins).sum(1)

    def _new_goals(self, n: int) -> np.ndarray:
        if self._goal_set is not None:
            return self._goal_set[self._rng.integers(0, len(self._goal_set), size=n)]
        return self._draw_goals(self._rng, n)

    def _obs(self):
        left = (self.spec.horizon - self._t) / self.spec.horizon
        if self.observation_mode == "image":
            return {"image": self.render_context(self._err, left),
                    "instruction": np.array([self.instruction(int(n)) for n in self.spec.horizon - self._t])}
        return np.concatenate([self._err, left[:, None]], axis=1).astype(np.float32)

    @property
    def error_scale(self) -> float:
        """The largest ``|e_i|`` a goal can have (the image's full red range)."""
        return max(self.spec.goal_reach * self.spec.horizon * self.spec.move, 1e-9)

    def render_context(self, err: np.ndarray, left: np.ndarray) -> np.ndarray:
        """``[N, S, S, 3]`` uint8 pictures of errors ``err [N, D]`` and steps-left fractions ``left [N]``."""
        S, D = self.image_size, self.spec.action_dims
        red = np.clip(128.0 + 127.0 * err / self.error_scale, 0, 255)  # [N, D]
        stripe = np.minimum(np.arange(S) * D // S, D - 1)  # column -> dim
        img = np.zeros((len(err), S, S, 3), dtype=np.uint8)
        img[..., 0] = np.rint(red[:, None, stripe]).astype(np.uint8)
        img[..., 1] = np.rint(255.0 * np.clip(left, 0, 1))[:, None, None].astype(np.uint8)
        return img

    def instruction(self, steps_left: int) -> str:
        if self.spec.horizon == 1:
            return "move the point to the goal"
        return f"move the point to the goal in {steps_left} steps"

    def _reset_envs(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if n == 0:
            return
        self._err[mask] = self._new_goals(n)
        self._t[mask] = 0
        self._ep_return[mask] = 0.0
        d, p = self.potential_parts(self._err[mask])
        self._ep_optimal[mask] = d.sum(-1) + p.sum((-1, -2))

    # envs reset with equal seeds (a list, one per env) start from equal goals (GRPO's groups)
    repeatable_resets = True

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """``seed``: one int (the env's RNG, every env a fresh goal) or one seed per env (env i's first goal drawn
        from its own seed, so envs with equal seeds start alike; later episodes come from the RNG of ``seed[0]``)."""
        if isinstance(seed, (list, tuple, np.ndarray)):
            if len(seed) != self.num_envs:
                raise ValueError(f"reset got {len(seed)} seeds for {self.num_envs} envs")
            self._reset_envs(np.ones(self.num_envs, dtype=bool))  # fills the bookkeeping; the goals are redrawn
            for i, s in enumerate(seed):
                self._rng = np.random.default_rng(int(s))
                self._reset_envs(np.arange(self.num_envs) == i)
            self._rng = np.random.default_rng(int(seed[0]))
        else:
            if seed is not None:
                self._rng = np.random.default_rng(seed)
            self._reset_envs(np.ones(self.num_envs, dtype=bool))
        self._needs_reset[:] = False
        return self._obs(), {"optimal_return": self._ep_optimal.copy()}

    def step(self, actions, active: np.ndarray | None = None):
        """One step of every env; ``active`` (bool ``[N]``): only these envs act, the others keep their state and
        get no reward (action chunks, envs/chunking.py: an env whose episode ended inside a chunk waits)."""
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, self.spec.action_dims)
        N = self.num_envs
        resetting = self._needs_reset.copy()  # next-step autoreset: these calls only reset
        idle = resetting if active is None else resetting | ~np.asarray(active, bool)
        per_dim, pair = self.reward_parts(self._err, actions)
        per_dim[idle] = 0.0
        pair[idle] = 0.0
        noise = self._rng.normal(0.0, self.spec.noise_std, N) if self.spec.noise_std > 0 else np.zeros(N)
        reward = per_dim.sum(-1) + pair.sum((-1, -2)) + noise
        reward[idle] = 0.0

        active = ~idle
        self._err[active] += self.moves(actions[active])
        self._t[active] += 1
        self._ep_return[active] += reward[active]
        dist = np.abs(self._err).max(-1)
        success = active & (dist <= self.spec.success_tol + 1e-9)
        # a bandit step always ends its episode; longer tasks end on success only when asked, and otherwise
        # at the horizon. The horizon is the task's end (the return is the progress made within it, and the
        # observation shows the steps left), so by default it terminates: V there is 0. As a truncation GAE
        # would bootstrap from V at a no-steps-left state that no transition starts from, so the critic
        # never learns it (measured: learning stalls at ~0.5 of optimal at horizon 3).
        at_horizon = active & (self._t >= self.spec.horizon)
        end_is_terminal = self.spec.horizon == 1 or self.spec.horizon_end == "terminate"
        terminated = (active & success & self.spec.terminate_on_success) | (at_horizon & end_is_terminal)
        truncated = at_horizon & ~terminated
        done = terminated | truncated
        info: dict[str, Any] = {
            "reward_per_dim": per_dim,
            "reward_pair": pair,
            "optimal_return": self._ep_optimal.copy(),
            "success": success,
        }
        if done.any():
            info["episode_return"] = np.where(done, self._ep_return, 0.0)
            info["episode_length"] = np.where(done, self._t, 0)
            info["episode_optimal"] = np.where(done, self._ep_optimal, 0.0)
            info["_episode"] = done.copy()
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
            if done.any():
                info["final_obs"] = self._obs()
                info["_final_obs"] = done.copy()
            self._reset_envs(done)
        else:
            self._reset_envs(resetting)
            self._needs_reset = done.copy()
        return self._obs(), reward, terminated, truncated, info

    # -- exact resume -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly (used by trainer checkpoints)."""
        return {
            "rng": self._rng.bit_generator.state,
            "err": self._err.copy(),
            "t": self._t.copy(),
            "ep_return": self._ep_return.copy(),
            "ep_optimal": self._ep_optimal.copy(),
            "needs_reset": self._needs_reset.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._err[:] = state["err"]
        self._t[:] = state["t"]
        self._ep_return[:] = state["ep_return"]
        self._ep_optimal[:] = state["ep_optimal"]
        self._needs_reset[:] = state["needs_reset"]


def optimal_bins(spec: StructuredTaskSpec, err: np.ndarray, steps_left: np.ndarray) -> np.ndarray:
    """Optimal bins ``[N, D]`` at errors ``err [N, D]`` with ``steps_left [N]`` (>= 1) steps to go.

    Goals lie on the move grid, so with ``s`` steps left the expert picks, per dim, the bin that brings the
    error closest to 0 *among the moves after which 0 is still reachable in ``s - 1`` steps*. Plain greedy
    is not optimal for an even K (a VLA's 256): there is no zero move, and stepping onto the goal early can
    leave an error the last step cannot cancel.

    Works in units of half the move grid, where bin k moves by ``2k - (K - 1)`` (an integer) and the sums
    of n moves are exactly the integers v with ``|v| <= n (K - 1)`` and ``v = n (K - 1) mod 2``.
    """
    K = spec.num_bins
    half_grid = spec.move / (K - 1)
    u = np.rint(np.asarray(err, dtype=np.float64) / half_grid).astype(np.int64)  # [N, D]
    moves = 2 * np.arange(K) - (K - 1)  # [K]
    after = u[..., None] + moves  # [N, D, K] error after each bin
    n = (np.asarray(steps_left, dtype=np.int64) - 1)[:, None, None]  # steps left after this one
    reachable = (np.abs(after) <= n * (K - 1)) & ((after - n * (K - 1)) % 2 == 0)
    # an unreachable goal (only off-grid errors, which the env never draws) falls back to plain greedy
    cost = np.where(reachable, np.abs(after), np.abs(after) + 10 * K * (int(n.max(initial=0)) + 1))
    return cost.argmin(-1)
