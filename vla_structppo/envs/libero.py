"""LIBERO (``env.id: libero``): the five suites as a vector env of bins, images and instructions.

``cfg.task`` is a suite (``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
``libero_90``); env ``j`` runs task ``j % n_tasks`` of the suite, so a vector of ``n_tasks`` envs covers
the suite once. Each episode starts from one of the benchmark's FIXED initial states (50 per task,
shipped with LIBERO): the envs that share a task take them in turn, so episode ``e`` of the ``s``-th
env of a task uses init state ``(s + e * m) % n_init`` (``m`` envs on that task) counted from the last
seeded reset -- the states LIBERO's own evaluation uses, in order, independent of the seed (the sim
has no other randomness once a state is set).

Observation: the ``agentview`` camera at ``cfg.image_size`` (rendered upside down by MuJoCo, flipped
upright here as OpenVLA does), the task's language instruction and, with ``state_obs``, the robot's
end-effector position, quaternion and gripper joints (9 floats). Actions are 7 bins per step decoded
on the grid of LIBERO's OSC_POSE bounds ``[-1, 1]^7`` (xyz, axis-angle rotation, gripper: -1 open,
+1 close). Reward is 1 on a success step (LIBERO's own sparse reward); ``info["success"]`` is
``env.check_success()``.

LIBERO ships no scripted expert (its demonstrations are a dataset download), so its envs have no
``expert_bins()``. The simulator lives in its own venv: ``bash scripts/setup_libero.sh`` (see
docs/environments.md). This module also holds ``BinnedSimVectorEnv``, the vector wrapper shared with
the ManiSkill3 adapter (bins in, the env contract's obs / info layout out).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from ..config import EnvConfig

__all__ = ["LIBERO_SUITES", "BinnedSimVectorEnv", "LiberoTaskEnv", "decode_bins", "make_libero_env"]

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
LIBERO_INSTALL = "bash scripts/setup_libero.sh  (then run with .venv-libero/bin/python)"
# OpenVLA's LIBERO evaluation waits this many no-op steps after setting an init state: objects are
# placed slightly above their rest pose and drop for the first few steps
SETTLE_STEPS = 10
# OSC_POSE's action_spec: xyz and axis-angle deltas scaled to [-1, 1], gripper -1 (open) .. +1 (close)
LIBERO_ACTION_BOUNDS = ([-1.0] * 7, [1.0] * 7)
_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def decode_bins(bins: np.ndarray, low: Sequence[float], high: Sequence[float], num_bins: int) -> np.ndarray:
    """Bins ``[..., D]`` -> continuous actions on the grid ``low + (high - low) * k / (K - 1)``."""
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    k = np.clip(np.asarray(bins, np.int64), 0, num_bins - 1)
    return lo + (hi - lo) * k / (num_bins - 1)


def _env_row(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, (np.ndarray, list, tuple)) else value


class BinnedSimVectorEnv(gym.vector.VectorWrapper):
    """The env contract on top of a gymnasium Sync/AsyncVectorEnv of single simulator envs.

    The single envs take bins and return ``{"image", "instruction"[, "state"]}`` (or a state vector),
    ``info["success"]``; they handle their own time limit. This wrapper turns the instruction tuple
    into an array of str, rebuilds ``info["final_obs"]`` in the batched dict layout (all N rows; rows
    that are not done hold the current obs), keeps ``success`` of the done step (gymnasium reports the
    reset's info there) and tracks ``episode_return`` / ``episode_length`` / ``_episode``.

    ``has_expert``: the single envs have a scripted expert; only then does the wrapper expose
    ``expert_bins()`` (demos and eval test for it with ``hasattr`` and say what to do instead).
    """

    def __init__(self, env: gym.vector.VectorEnv, bounds: tuple[list[float], list[float]],
                 seed: int | None = None, *, has_expert: bool) -> None:
        super().__init__(env)
        if has_expert:
            self.expert_bins = self._expert_bins
        self._bounds = bounds
        self._first_seed = seed  # the first reset without a seed uses the constructor's
        self.metadata = dict(env.metadata)
        self.metadata["autoreset_mode"] = AutoresetMode.SAME_STEP
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)

    @property
    def action_bounds(self) -> tuple[list[float], list[float]]:
        return list(self._bounds[0]), list(self._bounds[1])

    def _batch(self, obs: Any) -> Any:
        if isinstance(obs, dict):
            out = dict(obs)
            out["instruction"] = np.array(list(obs["instruction"]), dtype=str)
            return out
        return np.asarray(obs, dtype=np.float32)

    def _final_obs(self, rows: np.ndarray, current: Any, done: np.ndarray) -> Any:
        if isinstance(current, dict):
            out = {k: v.copy() for k, v in current.items()}
            for i in np.flatnonzero(done):
                for k in out:
                    out[k][i] = rows[i][k]
            return out
        out = current.copy()
        for i in np.flatnonzero(done):
            out[i] = rows[i]
        return out

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is None:
            seed, self._first_seed = self._first_seed, None
        else:
            self._first_seed = None
        # env i is seeded with seed + i (gymnasium's vector convention)
        obs, _ = self.env.reset(seed=seed, options=options)
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        return self._batch(obs), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        obs = self._batch(obs)
        done = np.asarray(terminated | truncated)
        success = np.zeros(self.num_envs, dtype=bool)
        if "success" in info:
            success[:] = np.asarray(info["success"], dtype=bool) & ~done
        if done.any():
            final_info = info.get("final_info", {})
            if "success" in final_info:
                success |= np.asarray(final_info["success"], dtype=bool) & done
        self._ep_return += reward
        self._ep_length += 1
        out: dict[str, Any] = {"success": success}
        if done.any():
            out["episode_return"] = np.where(done, self._ep_return, 0.0)
            out["episode_length"] = np.where(done, self._ep_length, 0)
            out["_episode"] = done.copy()
            out["final_obs"] = self._final_obs(info["final_obs"], obs, done)
            out["_final_obs"] = done.copy()
            self._ep_return[done] = 0.0
            self._ep_length[done] = 0
        return obs, np.asarray(reward, dtype=np.float64), np.asarray(terminated), np.asarray(truncated), out

    def _expert_bins(self) -> np.ndarray:
        """The scripted expert's bins ``[N, D]`` for the current state of every env."""
        return np.stack([np.asarray(b, dtype=np.int64) for b in self.env.call("expert_bins")])

    def close(self, **kwargs: Any) -> None:
        self.env.close(**kwargs)


def make_vector(factories: list[Callable[[], gym.Env]], vector_mode: str) -> gym.vector.VectorEnv:
    """A SAME_STEP Sync or Async (forkserver: a forked EGL / Vulkan context hangs) vector env."""
    if vector_mode == "sync":
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    if vector_mode == "async":
        # Text spaces cannot live in shared memory
        return gym.vector.AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, shared_memory=False,
                                         context="forkserver")
    raise ValueError(f"vector_mode must be 'sync' or 'async', got {vector_mode!r}")


def image_obs_space(size: int, state_dim: int | None) -> gym.spaces.Dict:
    spaces: dict[str, gym.Space] = {
        "image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
        "instruction": gym.spaces.Text(max_length=512),
    }
    if state_dim is not None:
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    return gym.spaces.Dict(spaces)


# -- LIBERO ------------------------------------------------------------------------------------------------


def _import_libero():
    """``libero.libero`` and its env class, with a config file and a headless GL set up first."""
    # MuJoCo picks its GL backend at import; EGL (Mesa llvmpipe) works headless, OSMesa is the fallback
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    import importlib.util

    spec = importlib.util.find_spec("libero")
    if spec is None or importlib.util.find_spec("robosuite") is None:
        raise ModuleNotFoundError(
            f"LIBERO is not installed in this interpreter. Install it into its own venv: {LIBERO_INSTALL}")
    # without a config file `import libero.libero` asks for a dataset path on stdin (EOFError in CI)
    cfg_dir = os.path.expanduser(os.environ.get("LIBERO_CONFIG_PATH", "~/.libero"))
    if not os.path.isfile(os.path.join(cfg_dir, "config.yaml")):
        root = os.path.join(os.path.dirname(spec.origin or ""), "libero")
        os.makedirs(cfg_dir, exist_ok=True)
        with open(os.path.join(cfg_dir, "config.yaml"), "w") as f:
            f.write(f"benchmark_root: {root}\nbddl_files: {root}/bddl_files\ninit_states: {root}/init_files\n"
                    f"datasets: {os.path.dirname(root)}/datasets\nassets: {root}/assets\n")
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    if not os.path.isdir(os.path.join(get_libero_path("assets"), "scenes")):
        raise FileNotFoundError(f"LIBERO's assets are missing under {get_libero_path('assets')}: {LIBERO_INSTALL}")
    return benchmark, get_libero_path, OffScreenRenderEnv


def libero_suite_tasks(suite: str) -> list[tuple[str, str]]:
    """``[(task name, language instruction)]`` of a suite."""
    benchmark, _, _ = _import_libero()
    if suite not in LIBERO_SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid: {list(LIBERO_SUITES)}")
    s = benchmark.get_benchmark_dict()[suite]()
    return [(s.get_task(i).name, s.get_task(i).language) for i in range(s.n_tasks)]


class LiberoTaskEnv(gym.Env):
    """One LIBERO task: bins in, upright agentview image + instruction out (see the module doc)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, suite: str, task_id: int, image_size: int = 128, max_episode_steps: int = 300,
                 num_bins: int = 256, terminate_on_success: bool = True, observation: str = "image",
                 state_obs: bool = False, init_slot: int = 0, init_stride: int = 1,
                 settle_steps: int = SETTLE_STEPS) -> None:
        benchmark, get_libero_path, env_cls = _import_libero()
        import torch

        if suite not in LIBERO_SUITES:
            raise ValueError(f"unknown LIBERO suite {suite!r}; valid: {list(LIBERO_SUITES)}")
        bench = benchmark.get_benchmark_dict()[suite]()
        task = bench.get_task(task_id % bench.n_tasks)
        self.task_name, self.instruction = task.name, task.language
        init_path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
        # the init states are pickled numpy arrays: torch >= 2.6 refuses them with weights_only=True
        self.init_states = np.asarray(torch.load(init_path, weights_only=False))
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        # hard_reset=False: reset reuses the MuJoCo model (0.25 s instead of ~2 s); the init state is set
        # right after, so nothing of the previous episode survives
        self.sim = env_cls(bddl_file_name=bddl, camera_heights=image_size, camera_widths=image_size,
                           camera_names=["agentview"], hard_reset=False)
        self.low, self.high = (np.asarray(b, np.float64) for b in self.sim.env.action_spec)
        self.num_bins, self.image_size = num_bins, image_size
        self.max_episode_steps, self.terminate_on_success = max_episode_steps, terminate_on_success
        self.observation_mode, self.state_obs = observation, state_obs
        self.init_slot, self.init_stride, self.settle_steps = init_slot, init_stride, settle_steps
        D = len(self.low)
        self.action_space = gym.spaces.MultiDiscrete([num_bins] * D)
        if observation == "image":
            self.observation_space = image_obs_space(image_size, 9 if state_obs else None)
        elif observation == "state":
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._state_dim(),), np.float32)
        else:
            raise ValueError(f"observation must be 'state' or 'image', got {observation!r}")
        self._episode = 0
        self._t = 0
        self._raw: dict[str, Any] = {}

    def _state_dim(self) -> int:
        self.sim.seed(0)
        raw = self.sim.reset()
        return 9 + int(np.asarray(raw["object-state"]).size)

    def _obs(self) -> Any:
        raw = self._raw
        proprio = np.concatenate([np.asarray(raw[k], np.float32).ravel() for k in _STATE_KEYS])
        if self.observation_mode == "state":
            return np.concatenate([proprio, np.asarray(raw["object-state"], np.float32).ravel()])
        # MuJoCo's offscreen buffer is bottom-up and this camera mirrored: rotate by 180 degrees
        obs = {"image": np.ascontiguousarray(raw["agentview_image"][::-1, ::-1]).astype(np.uint8),
               "instruction": self.instruction}
        if self.state_obs:
            obs["state"] = proprio
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._episode = 0
            self.sim.seed(seed)
        k = (self.init_slot + self._episode * self.init_stride) % len(self.init_states)
        self._episode += 1
        self.sim.reset()
        self._raw = self.sim.set_init_state(self.init_states[k])
        noop = np.zeros(len(self.low))
        noop[-1] = -1.0  # gripper open
        for _ in range(self.settle_steps):
            self._raw, _, _, _ = self.sim.step(noop)
        self._t = 0
        self.init_index = k
        return self._obs(), {"init_state": k}

    def step(self, action):
        a = decode_bins(np.asarray(action).reshape(-1), self.low, self.high, self.num_bins)
        self._raw, _, _, _ = self.sim.step(a)
        self._t += 1
        success = bool(self.sim.check_success())
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._t >= self.max_episode_steps
        return self._obs(), float(success), terminated, truncated, {"success": success}

    def render(self) -> np.ndarray:
        return np.ascontiguousarray(self._raw["agentview_image"][::-1, ::-1])

    def close(self) -> None:
        self.sim.close()


def _make_libero_task(**kwargs: Any) -> LiberoTaskEnv:
    return LiberoTaskEnv(**kwargs)


def make_libero_env(cfg: EnvConfig, num_envs: int, seed: int) -> BinnedSimVectorEnv:
    """A vector env of ``num_envs`` LIBERO envs cycling over the tasks of suite ``cfg.task``.

    ``seed`` only seeds the first reset's simulator RNGs; the init states follow the benchmark's order
    (module doc). Raises ``ModuleNotFoundError`` naming the install script when LIBERO is missing.
    """
    suite = cfg.task or "libero_spatial"
    if suite not in LIBERO_SUITES:
        raise ValueError(f"env.task must be a LIBERO suite {list(LIBERO_SUITES)}, got {cfg.task!r}")
    if cfg.action_dims != 7:
        raise ValueError(f"LIBERO's OSC_POSE controller takes 7-d actions; env.action_dims is {cfg.action_dims}")
    n_tasks = len(libero_suite_tasks(suite))
    factories = []
    for j in range(num_envs):
        task = j % n_tasks
        stride = len(range(task, num_envs, n_tasks))  # envs sharing this task take the init states in turn
        factories.append(functools.partial(
            _make_libero_task, suite=suite, task_id=task, image_size=cfg.image_size,
            max_episode_steps=cfg.max_episode_steps, num_bins=cfg.num_bins,
            terminate_on_success=cfg.terminate_on_success, observation=cfg.observation, state_obs=cfg.state_obs,
            init_slot=j // n_tasks, init_stride=stride))
    venv = make_vector(factories, cfg.vector_mode)
    # no scripted expert: LIBERO's demonstrations are its datasets (hdf5, or LeRobot / RLDS conversions)
    return BinnedSimVectorEnv(venv, LIBERO_ACTION_BOUNDS, seed=seed, has_expert=False)
