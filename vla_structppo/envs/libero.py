"""LIBERO (``env.id: libero``): the five suites as a vector env of bins, images and instructions.

``cfg.task`` is a suite (``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
``libero_90``); env ``j`` runs task ``j % n_tasks`` of the suite, so a vector of ``n_tasks`` envs covers
the suite once. Each episode starts from one of the benchmark's FIXED initial states (50 per task,
shipped with LIBERO): the envs that share a task take them in turn, so episode ``e`` of the ``s``-th
env of a task uses init state ``(s + e * m) % n_init`` (``m`` envs on that task) counted from the last
seeded reset -- the states LIBERO's own evaluation uses, in order, independent of the seed (the sim
has no other randomness once a state is set).

Observation: the ``env.libero.camera`` picture at ``cfg.image_size`` (rendered upside down by MuJoCo,
flipped upright here as OpenVLA does; with ``env.libero.protocol: openvla`` rendered at ``render_size`` and
prepared exactly as OpenVLA's LIBERO evaluation prepares it -- envs/openvla_protocol.py), the task's language instruction and, with ``state_obs``, the
robot's end-effector position, quaternion and gripper joints (9 floats). Actions are 7 bins per step
decoded on the bin grid of LIBERO's OSC_POSE bounds ``[-1, 1]^7`` (xyz, axis-angle rotation, gripper:
-1 open, +1 close). Reward is 1 on a success step (LIBERO's own sparse reward); ``info["success"]`` is
``env.check_success()``.

LIBERO ships no scripted expert (its demonstrations are a dataset download): ``has_expert`` is false.
``task_labels`` are the suite's task names, so an evaluation reports one row per task. The simulator
lives in its own venv: ``bash scripts/setup_libero.sh`` (see docs/environments.md).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gymnasium as gym
import numpy as np

from ..config import EnvConfig
from .contract import EnvError, SimulatorMissingError
from .headless_gl import use_headless_gl
from .openvla_protocol import check_exact_jpeg, libero_gripper, openvla_libero_image
from .sim import SimVectorEnv, image_obs_space, make_vector

__all__ = ["LIBERO_SUITES", "LiberoTaskEnv", "libero_suite_tasks", "make_libero_env"]

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
LIBERO_INSTALL = "bash scripts/setup_libero.sh  (then run with .venv-libero/bin/python)"
# OSC_POSE's action_spec: xyz and axis-angle deltas scaled to [-1, 1], gripper -1 (open) .. +1 (close)
LIBERO_ACTION_BOUNDS = ([-1.0] * 7, [1.0] * 7)
_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
WRIST_CAMERA = "robot0_eye_in_hand"


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """A unit quaternion ``(x, y, z, w)`` (robosuite's order) as an axis-angle vector ``axis * angle`` (3 floats);
    the identity gives zeros. OpenVLA-OFT's LIBERO proprio uses this form of the end-effector orientation."""
    q = np.asarray(quat, np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * np.arccos(w) / sin_half


# -- LIBERO ------------------------------------------------------------------------------------------------


def _import_libero():
    """``libero.libero`` and its env class, with a config file and a headless GL set up first."""
    use_headless_gl()  # before robosuite imports mujoco (envs/headless_gl.py); OSMesa is the fallback
    import importlib.util

    spec = importlib.util.find_spec("libero")
    if spec is None or importlib.util.find_spec("robosuite") is None:
        raise SimulatorMissingError(
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
        raise SimulatorMissingError(f"LIBERO's assets are missing under {get_libero_path('assets')}: {LIBERO_INSTALL}")
    return benchmark, get_libero_path, OffScreenRenderEnv


def libero_suite_tasks(suite: str) -> list[tuple[str, str]]:
    """``[(task name, language instruction)]`` of a suite."""
    benchmark, _, _ = _import_libero()
    if suite not in LIBERO_SUITES:
        raise EnvError(f"unknown LIBERO suite {suite!r}; valid: {list(LIBERO_SUITES)}")
    s = benchmark.get_benchmark_dict()[suite]()
    return [(s.get_task(i).name, s.get_task(i).language) for i in range(s.n_tasks)]


class LiberoTaskEnv(gym.Env):
    """One LIBERO task: continuous actions in, the upright camera picture (or state) out (module doc)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, suite: str, task_id: int, image_size: int = 128, max_episode_steps: int = 300,
                 terminate_on_success: bool = True, observation: str = "image", state_obs: bool = False,
                 init_slot: int = 0, init_stride: int = 1, settle_steps: int = 10,
                 camera: str = "agentview", protocol: str = "raw", render_size: int = 256,
                 wrist_camera: bool = False, state_format: str = "quat") -> None:
        benchmark, get_libero_path, env_cls = _import_libero()
        import torch

        if suite not in LIBERO_SUITES:
            raise EnvError(f"unknown LIBERO suite {suite!r}; valid: {list(LIBERO_SUITES)}")
        if protocol not in ("raw", "openvla"):
            raise EnvError(f"protocol must be 'raw' or 'openvla', got {protocol!r}")
        if protocol == "openvla":
            check_exact_jpeg()
        self.protocol = protocol
        bench = benchmark.get_benchmark_dict()[suite]()
        task = bench.get_task(task_id % bench.n_tasks)
        self.task_name, self.instruction = task.name, task.language
        init_path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
        # the init states are pickled numpy arrays: torch >= 2.6 refuses them with weights_only=True
        self.init_states = np.asarray(torch.load(init_path, weights_only=False))
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        # hard_reset=False: reset reuses the MuJoCo model (0.25 s instead of ~2 s); the init state is set
        # right after, so nothing of the previous episode survives
        self.camera = camera
        self.cameras = [camera] + ([WRIST_CAMERA] if wrist_camera else [])
        self.state_format = state_format
        # the OpenVLA protocol renders larger and resizes the way its training data was resized
        rendered = render_size if protocol == "openvla" else image_size
        self.sim = env_cls(bddl_file_name=bddl, camera_heights=rendered, camera_widths=rendered,
                           camera_names=self.cameras, hard_reset=False)
        low, high = (np.asarray(b, np.float32) for b in self.sim.env.action_spec)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.image_size = image_size
        self.max_episode_steps, self.terminate_on_success = max_episode_steps, terminate_on_success
        self.observation_mode, self.state_obs = observation, state_obs
        self.init_slot, self.init_stride, self.settle_steps = init_slot, init_stride, settle_steps
        if observation == "image":
            state_dim = (9 if state_format == "quat" else 8) if state_obs else None
            self.observation_space = image_obs_space(image_size, state_dim, views=len(self.cameras))
        elif observation == "state":
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._state_dim(),), np.float32)
        else:
            raise EnvError(f"observation must be 'state' or 'image', got {observation!r}")
        self._episode = 0
        self._t = 0
        self._raw: dict[str, Any] = {}

    def _state_dim(self) -> int:
        self.sim.seed(0)
        raw = self.sim.reset()
        return 9 + int(np.asarray(raw["object-state"]).size)

    def _image(self, camera: str | None = None) -> np.ndarray:
        raw = np.asarray(self._raw[f"{camera or self.camera}_image"], np.uint8)
        if self.protocol == "openvla":  # rotation, JPEG, lanczos resize, centre crop (openvla_protocol.py)
            return openvla_libero_image(raw, self.image_size)
        # MuJoCo's offscreen buffer is bottom row first; OpenVLA (and its LIBERO training data) turns it by 180
        # degrees, which is upright but mirrored left-right -- kept so pictures match what such policies saw
        return np.ascontiguousarray(raw[::-1, ::-1])

    def _obs(self) -> Any:
        raw = self._raw
        proprio = np.concatenate([np.asarray(raw[k], np.float32).ravel() for k in _STATE_KEYS])
        if self.observation_mode == "state":
            return np.concatenate([proprio, np.asarray(raw["object-state"], np.float32).ravel()])
        views = [self._image(c) for c in self.cameras]
        obs = {"image": views[0] if len(views) == 1 else np.stack(views)}
        if self.state_obs:
            if self.state_format == "axis_angle":  # OFT: eef position, axis-angle, gripper joints
                proprio = np.concatenate([proprio[:3], quat_to_axis_angle(proprio[3:7]), proprio[7:9]]).astype(
                    np.float32)
            obs["state"] = proprio
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._episode = 0
            self.sim.seed(seed)
        if seed is not None and (options or {}).get("repeat"):
            k = int(seed) % len(self.init_states)  # GRPO: the seed picks one of the task's fixed init states
        else:
            k = (self.init_slot + self._episode * self.init_stride) % len(self.init_states)
        self._episode += 1
        self.sim.reset()
        self._raw = self.sim.set_init_state(self.init_states[k])
        noop = np.zeros(self.action_space.shape[0])
        noop[-1] = -1.0  # gripper open
        for _ in range(self.settle_steps):
            self._raw, _, _, _ = self.sim.step(noop)
        self._t = 0
        self.init_index = k
        return self._obs(), {"init_state": k}

    def step(self, action):
        action = np.asarray(action, np.float64).reshape(-1)
        if self.protocol == "openvla":  # the RLDS gripper (0 close, 1 open) -> LIBERO's (-1 open, +1 close)
            action = libero_gripper(action)
        self._raw, _, _, _ = self.sim.step(action)
        self._t += 1
        success = bool(self.sim.check_success())
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._t >= self.max_episode_steps
        return self._obs(), float(success), terminated, truncated, {"success": success}

    def render(self) -> np.ndarray:
        return self._image()

    def close(self) -> None:
        self.sim.close()


def _make_libero_task(**kwargs: Any) -> LiberoTaskEnv:
    return LiberoTaskEnv(**kwargs)


def make_libero_env(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int = 1, group_size: int = 1) -> SimVectorEnv:
    """A vector env of ``num_envs`` LIBERO envs cycling over the tasks of suite ``cfg.task``.

    ``seed`` only seeds the first reset's simulator RNGs; the init states follow the benchmark's order
    (module doc). Raises ``ModuleNotFoundError`` naming the install script when LIBERO is missing.
    """
    suite = cfg.task
    if suite not in LIBERO_SUITES:
        raise EnvError(f"env.task must be a LIBERO suite {list(LIBERO_SUITES)}, got {cfg.task!r}")
    if cfg.action_dims != 7:
        raise EnvError(f"LIBERO's OSC_POSE controller takes 7-d actions; env.action_dims is {cfg.action_dims}")
    if cfg.libero.protocol == "openvla":
        check_exact_jpeg()  # before any simulator starts
    tasks = libero_suite_tasks(suite)
    n_tasks = len(tasks)
    # env j runs task (j // group_size) % n_tasks: GRPO's groups of envs share a task; without groups, j % n_tasks
    task_of = [(j // group_size) % n_tasks for j in range(num_envs)]
    factories = []
    for j, task in enumerate(task_of):
        stride = task_of.count(task)  # envs sharing this task take the init states in turn
        factories.append(functools.partial(
            _make_libero_task, suite=suite, task_id=task, image_size=cfg.image_size,
            max_episode_steps=cfg.max_episode_steps, terminate_on_success=cfg.terminate_on_success,
            observation=cfg.observation, state_obs=cfg.state_obs, init_slot=task_of[:j].count(task),
            init_stride=stride, settle_steps=cfg.libero.settle_steps, camera=cfg.libero.camera,
            protocol=cfg.libero.protocol, render_size=cfg.libero.render_size, wrist_camera=cfg.libero.wrist_camera,
            state_format=cfg.libero.state_format))
    env_tasks = [tasks[t] for t in task_of]
    try:
        inner = make_vector(factories, cfg.vector_mode, chunk_size)
    except RuntimeError as err:
        if "observation spaces are not equivalent" not in str(err):
            raise
        # libero_10 / libero_90: object-state width differs between tasks (e.g. 121 vs 37 floats)
        raise EnvError(f"the tasks of {suite} have object states of different sizes, so observation=state cannot "
                       "batch them: use observation=image (state_obs=true adds the 9 robot floats, the same for "
                       "every task), or fewer envs than it takes to mix tasks of different sizes") from None
    return SimVectorEnv(inner, LIBERO_ACTION_BOUNDS, cfg.num_bins,
                        task_labels=[name for name, _ in env_tasks], instructions=[lang for _, lang in env_tasks],
                        has_expert=False, seed=seed, chunk_size=chunk_size)
