"""ManiSkill3 (``env.id: maniskill``): PickCube / PushCube / StackCube as a vector env of bins and images.

``cfg.task`` is the ManiSkill env id (``PickCube-v1``, ``PushCube-v1``, ``StackCube-v1``). The CPU
simulator runs one env per ManiSkill instance; ``vector_mode: sync`` steps them in this process,
``async`` in forkserver workers. Controller ``pd_ee_delta_pose``: 7-d actions, all normalised by
ManiSkill to ``[-1, 1]`` -- xyz delta (x 0.1 m, root frame), rotation delta (axis-angle, x 0.1 rad) and the
gripper target (-1 closed .. +1 open) -- so bins decode on the grid of ``[-1, 1]^7``.

Observation: the ``env.maniskill.camera`` rgb image at ``cfg.image_size`` (upright as rendered), an instruction
per task and, with ``state_obs``, the TCP pose (7) and the two finger joints (9 floats);
``observation: state`` gives ManiSkill's flat ``state`` observation instead. Reward is 1 on success steps
(``reward_mode="sparse"``), ``info["success"]`` is ManiSkill's.

``expert_action()``: ManiSkill's motion-planning solutions (``mani_skill.examples.motionplanning``) plan
whole episodes in ``pd_joint_pos`` and cannot be asked for one action of a given state, so the expert
here is a closed-loop scripted controller written for ``pd_ee_delta_pose`` that reads the privileged
object poses (approach, descend, grasp, carry / push / stack); see ``docs/environments.md`` for its
measured success rates.

Needs a Vulkan device even for state observations: on a CPU-only machine Mesa 25 lavapipe, installed
with ``bash scripts/setup_maniskill.sh`` which writes ``<venv>/sim_env.sh`` (``VK_ICD_FILENAMES``);
when that variable is unset this module sets it from ``<venv>/sim_env.sh`` or the ICD json the script
writes, before SAPIEN is imported.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from ..config import EnvConfig
from .contract import EnvError, SimulatorMissingError
from .sim import SimVectorEnv, image_obs_space, make_vector

__all__ = ["MANISKILL_TASKS", "ManiSkillTaskEnv", "make_maniskill_env"]

MANISKILL_TASKS = {
    "PickCube-v1": "pick up the red cube and move it to the goal",
    "PushCube-v1": "push the cube to the goal",
    "StackCube-v1": "stack the red cube on the green cube",
}
MANISKILL_INSTALL = "bash scripts/setup_maniskill.sh  (then run with .venv-maniskill/bin/python)"
MANISKILL_ACTION_BOUNDS = ([-1.0] * 7, [1.0] * 7)
_REPO = Path(__file__).resolve().parents[2]


def _find_icd() -> str | None:
    """The lavapipe ICD json that scripts/setup_maniskill.sh installed (this venv's, then the repo's)."""
    for venv in (Path(sys.prefix), _REPO / ".venv-maniskill"):
        snippet = venv / "sim_env.sh"
        if snippet.is_file():
            m = re.search(r'VK_ICD_FILENAMES="?([^"\n]+)"?', snippet.read_text())
            if m and Path(m.group(1)).is_file():
                return m.group(1)
        icd = venv / "vulkan-lvp" / "lvp_icd.json"
        if icd.is_file():
            return str(icd)
    return None


def _import_maniskill():
    if "VK_ICD_FILENAMES" not in os.environ and (icd := _find_icd()) is not None:
        # must happen before SAPIEN creates its Vulkan instance (at the first env)
        os.environ["VK_ICD_FILENAMES"] = icd
    try:
        import mani_skill.envs  # noqa: F401  (registers the env ids)
    except ImportError as e:
        raise SimulatorMissingError(
            f"ManiSkill3 is not installed in this interpreter ({e}). Install it into its own venv: "
            f"{MANISKILL_INSTALL}") from e


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class ManiSkillTaskEnv(gym.Env):
    """One ManiSkill3 CPU env: continuous actions in, the upright camera picture (or state) out."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str = "PickCube-v1", image_size: int = 128, max_episode_steps: int = 100,
                 terminate_on_success: bool = True, observation: str = "image", state_obs: bool = False,
                 camera: str = "base_camera") -> None:
        _import_maniskill()
        if task not in MANISKILL_TASKS:
            raise EnvError(f"unsupported ManiSkill task {task!r}; valid: {list(MANISKILL_TASKS)}")
        if observation not in ("image", "state"):
            raise EnvError(f"observation must be 'state' or 'image', got {observation!r}")
        obs_mode = "rgb" if observation == "image" else "state"
        try:
            # the raw env (no TimeLimit): the time limit and termination are handled here
            self.sim = gym.make(task, obs_mode=obs_mode, control_mode="pd_ee_delta_pose", reward_mode="sparse",
                                sim_backend="cpu", sensor_configs=dict(width=image_size, height=image_size),
                                render_mode="rgb_array").unwrapped
        except RuntimeError as e:
            raise SimulatorMissingError(
                f"ManiSkill3 / SAPIEN could not create {task} ({e}). It needs a Vulkan device: on a CPU-only "
                f"machine run {MANISKILL_INSTALL} and export VK_ICD_FILENAMES=<venv>/vulkan-lvp/lvp_icd.json "
                f"(currently {os.environ.get('VK_ICD_FILENAMES')!r})") from e
        self.task, self.instruction, self.camera = task, MANISKILL_TASKS[task], camera
        space = self.sim.single_action_space
        self.low, self.high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        self.image_size = image_size
        self.max_episode_steps, self.terminate_on_success = max_episode_steps, terminate_on_success
        self.observation_mode, self.state_obs = observation, state_obs
        self.action_space = gym.spaces.Box(space.low, space.high, dtype=np.float32)
        if observation == "image":
            self.observation_space = image_obs_space(image_size, 9 if state_obs else None)
        else:
            n = int(np.prod(self.sim.single_observation_space.shape))
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)
        self._t = 0
        self._raw: Any = None
        self._info: dict[str, Any] = {}
        self._grasp_steps = 0

    def _obs(self) -> Any:
        raw = self._raw
        if self.observation_mode == "state":
            return _np(raw)[0].astype(np.float32)
        obs = {"image": _np(raw["sensor_data"][self.camera]["rgb"])[0].astype(np.uint8)}
        if self.state_obs:
            obs["state"] = np.concatenate([_np(raw["extra"]["tcp_pose"])[0],
                                           _np(raw["agent"]["qpos"])[0, -2:]]).astype(np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # ManiSkill seeds its episode RNG from `seed`; later unseeded resets draw from that RNG
        self._raw, self._info = self.sim.reset(seed=seed)
        self._t = 0
        self._grasp_steps = 0
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, np.float32).reshape(-1)
        self._raw, _, _, _, self._info = self.sim.step(a[None])
        self._t += 1
        success = bool(_np(self._info["success"]).reshape(-1)[0])
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._t >= self.max_episode_steps
        return self._obs(), float(success), terminated, truncated, {"success": success}

    def render(self) -> np.ndarray:
        return _np(self.sim.render())[0].astype(np.uint8)

    def close(self) -> None:
        self.sim.close()

    # -- scripted expert -----------------------------------------------------------------------------------
    def _pos(self, actor: Any) -> np.ndarray:
        return _np(actor.pose.p)[0].astype(np.float64)

    def _move(self, tcp: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
        # the controller moves the TCP by action * 0.1 m per step: a full-error step, clipped
        a = np.zeros(7)
        a[:3] = np.clip((target - tcp) / 0.1, -1.0, 1.0)
        a[6] = gripper
        return a

    def _grasp_and_carry(self, tcp: np.ndarray, obj: np.ndarray, goal: np.ndarray, grasped: bool,
                         release: bool = False) -> np.ndarray:
        """Pick ``obj`` and carry it to ``goal``; ``release`` opens the gripper once it is there."""
        OPEN, CLOSE = 1.0, -1.0
        if grasped:
            self._grasp_steps = 0
            if release and np.linalg.norm(goal - obj) < 0.01:
                return self._move(tcp, tcp, OPEN)
            return self._move(tcp, tcp + (goal - obj), CLOSE)
        above = obj + np.array([0.0, 0.0, 0.08])
        if np.linalg.norm(tcp[:2] - obj[:2]) > 0.01:
            # approach from above, so the fingers never sweep the object away
            self._grasp_steps = 0
            return self._move(tcp, above if tcp[2] > obj[2] + 0.03 else tcp + np.array([0, 0, 0.05]), OPEN)
        if tcp[2] - obj[2] > 0.005 and self._grasp_steps == 0:
            return self._move(tcp, obj, OPEN)
        self._grasp_steps += 1
        return self._move(tcp, obj, CLOSE)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's continuous action (normalised, ``[-1, 1]^7``) for the current state."""
        sim = self.sim
        tcp = _np(sim.agent.tcp.pose.p)[0].astype(np.float64)
        if self.task == "PickCube-v1":
            grasped = bool(_np(sim.agent.is_grasping(sim.cube)).reshape(-1)[0])
            return self._grasp_and_carry(tcp, self._pos(sim.cube), self._pos(sim.goal_site), grasped)
        if self.task == "StackCube-v1":
            a, b = self._pos(sim.cubeA), self._pos(sim.cubeB)
            grasped = bool(_np(sim.agent.is_grasping(sim.cubeA)).reshape(-1)[0])
            target = b + np.array([0.0, 0.0, 2 * float(_np(sim.cube_half_size).reshape(-1)[-1])])
            if not grasped and np.linalg.norm(a[:2] - b[:2]) < 0.01 and a[2] > b[2] + 0.01:
                # placed: open and lift away so the stack counts as released and static
                return self._move(tcp, a + np.array([0, 0, 0.08]), 1.0)
            return self._grasp_and_carry(tcp, a, target + np.array([0, 0, 0.005]), grasped, release=True)
        # PushCube: fingers closed, get behind the cube (-x side) at table height, push towards the goal
        cube, goal = self._pos(sim.obj), self._pos(sim.goal_region)
        half, CLOSE = 0.02, -1.0
        behind_x = cube[0] - half - 0.025
        aligned = abs(tcp[1] - cube[1]) < 0.01 and tcp[0] < cube[0] - half + 0.005
        if not aligned:
            # back off and up first (never sweep across the cube), then line up behind it
            return self._move(tcp, np.array([behind_x, cube[1], 0.08]), CLOSE)
        if tcp[2] > half + 0.01:
            return self._move(tcp, np.array([behind_x, cube[1], half]), CLOSE)
        return self._move(tcp, np.array([goal[0] - half, cube[1], half]), CLOSE)


def _make_maniskill_task(**kwargs: Any) -> ManiSkillTaskEnv:
    return ManiSkillTaskEnv(**kwargs)


def make_maniskill_env(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int = 1) -> SimVectorEnv:
    """A vector env of ``num_envs`` ManiSkill3 CPU envs of task ``cfg.task``.

    Env ``i`` is seeded with ``seed + i`` at the first reset. Raises ``ModuleNotFoundError`` /
    ``RuntimeError`` naming the install script and ``VK_ICD_FILENAMES`` when the simulator is unusable.
    """
    task = cfg.task
    if task not in MANISKILL_TASKS:
        raise EnvError(f"env.task must be one of {list(MANISKILL_TASKS)} for maniskill, got {cfg.task!r}")
    if cfg.action_dims != 7:
        raise EnvError(f"pd_ee_delta_pose takes 7-d actions; env.action_dims is {cfg.action_dims}")
    _import_maniskill()  # fail here, with the install hint, rather than in a worker
    factory = functools.partial(
        _make_maniskill_task, task=task, image_size=cfg.image_size, max_episode_steps=cfg.max_episode_steps,
        terminate_on_success=cfg.terminate_on_success, observation=cfg.observation, state_obs=cfg.state_obs,
        camera=cfg.maniskill.camera)
    return SimVectorEnv(make_vector([factory] * num_envs, cfg.vector_mode, chunk_size), MANISKILL_ACTION_BOUNDS,
                        cfg.num_bins, task_labels=[task] * num_envs, instructions=[MANISKILL_TASKS[task]] * num_envs,
                        has_expert=True, seed=seed, chunk_size=chunk_size)
