"""``env``: which environment, and each environment's own section (``env.structured``, ``env.metaworld`` ...)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from omegaconf import MISSING

from .choices import (
    AUTORESET_MODES,
    ENV_IDS,
    HORIZON_ENDS,
    LIBERO_PROTOCOLS,
    METAWORLD_REWARDS,
    OBSERVATIONS,
    VECTOR_MODES,
)
from .choices import not_one_of as _not_one_of

__all__ = ["MOVED_ENV_KEYS", "EnvConfig", "GymEnvConfig", "LiberoEnvConfig", "ManiSkillEnvConfig", "MetaWorldEnvConfig",
           "PairConfig", "StructuredEnvConfig"]

# keys of the flat ``env`` section before it was split per environment -> the sections that took them
# (old recipes get an error naming the new key; old checkpoints' config.yaml is migrated on load)
MOVED_ENV_KEYS: dict[str, tuple[str, ...]] = {
    **{k: ("structured",) for k in ("horizon", "dim_weights", "pairs", "noise_std", "max_move", "goal_reach",
                                    "num_goals", "autoreset_mode")},
    **{k: ("metaworld",) for k in ("camera", "randomize_goals", "reward", "action_repeat", "mesh_lod")},
    "task_seed": ("structured", "metaworld"),
}


@dataclass
class PairConfig:
    i: int = MISSING
    """First action dim of an interacting pair."""
    j: int = MISSING
    """Second action dim of the pair."""
    weight: float = 1.0
    """Weight ``w_ij`` of the pair's reward part."""


@dataclass
class StructuredEnvConfig:
    """``env.id: structured``: a task of known per-dim and pairwise structure (envs/structured.py)."""

    horizon: int = 1
    """Steps per episode: 1 = contextual bandit; >1 = sequential task (credit flows through GAE)."""
    dim_weights: Optional[List[float]] = None  # noqa: UP006, UP045
    """Per-dim reward weights ``w_i`` (0 = the dim is a distractor); null = all 1."""
    pairs: List[PairConfig] = field(default_factory=list)  # noqa: UP006
    """Interacting dim pairs ``{i, j, weight}`` whose relative move is rewarded."""
    noise_std: float = 0.0
    """Std of Gaussian reward noise."""
    max_move: Optional[float] = None  # noqa: UP045
    """Largest move of one step per coordinate; null = 1.0."""
    goal_reach: float = 1.0
    """Goals are drawn within this fraction of what ``horizon`` steps can reach."""
    num_goals: int = 0
    """0 = a fresh random goal every episode; n > 0 = goals from a fixed set of n (the task's contexts)."""
    task_seed: int = 0
    """Seed of the task itself (the fixed goal set), independent of the run's seed."""
    autoreset_mode: str = "same_step"
    """Gymnasium autoreset: ``same_step`` or ``next_step`` (gymnasium's default; reset steps are masked).
    The simulators reset on the same step."""
    horizon_end: str = "terminate"
    """How a sequential episode ends at its horizon: ``terminate`` (the task's end: nothing follows it and the
    observation shows the steps left, so its value is 0) or ``truncate`` (a time limit, bootstrapped in GAE from
    the critic at a no-steps-left state no transition starts from, so never trained: measured to stall
    learning at ~0.5 of optimal; kept as the cheap way to exercise the truncation path)."""

    def problems(self, env: EnvConfig) -> list[str]:
        out = [f"env.structured.{k} must be >= {low}, got {v}"
               for k, v, low in (("horizon", self.horizon, 1), ("num_goals", self.num_goals, 0))
               if v < low]
        if self.autoreset_mode not in AUTORESET_MODES:
            out.append(_not_one_of("env.structured.autoreset_mode", self.autoreset_mode, AUTORESET_MODES))
        if self.horizon_end not in HORIZON_ENDS:
            out.append(_not_one_of("env.structured.horizon_end", self.horizon_end, HORIZON_ENDS))
        if self.noise_std < 0 or not math.isfinite(self.noise_std):
            out.append(f"env.structured.noise_std must be a finite number >= 0, got {self.noise_std}")
        if self.max_move is not None and not (math.isfinite(self.max_move) and self.max_move > 0):
            out.append(f"env.structured.max_move must be > 0 (or null for 1.0), got {self.max_move}")
        if not 0.0 < self.goal_reach <= 1.0:
            out.append(f"env.structured.goal_reach must lie in (0, 1], got {self.goal_reach}")
        D = env.action_dims
        if self.dim_weights is not None and len(self.dim_weights) != D:
            out.append(f"env.structured.dim_weights has {len(self.dim_weights)} entries but env.action_dims={D}")
        for k, pair in enumerate(self.pairs):
            if not (0 <= pair.i < D and 0 <= pair.j < D and pair.i != pair.j):
                out.append(f"env.structured.pairs[{k}] = ({pair.i}, {pair.j}) must be two different dims in 0..{D - 1}")
        return out


@dataclass
class MetaWorldEnvConfig:
    """``env.id: metaworld``: MetaWorld MT1 / MT10 / MT50 (envs/metaworld.py)."""

    camera: str = "corner2"
    """Camera rendered into the image observation."""
    randomize_goals: bool = True
    """A fresh random goal / object position every episode (off: the benchmark's 50 fixed variants)."""
    reward: str = "dense"
    """``dense`` (the benchmark's shaped reward) or ``success`` (1 on the step the task succeeds, 0
    otherwise; with terminate_on_success, the sparse reward VLA-RL systems train on)."""
    action_repeat: int = 1
    """Each action is held for this many simulator steps (rewards summed; a success ends the repeat when
    ``terminate_on_success``), and one picture is rendered per action; ``max_episode_steps`` counts
    actions. 2-3 keeps the scripted experts at 100% with a half / third of the decisions (the
    action-repeat convention of pixel-based RL)."""
    mesh_lod: float = 0.0
    """Render-only mesh simplification, the vertex-clustering cell as a fraction of each mesh's size
    (0 = full meshes). 0.04 halves the cost of a 64 px frame on a CPU (Mesa) renderer and changes its
    pixels by <1/255 on average; physics is untouched (envs/mesh_lod.py)."""
    task_seed: int = 0
    """Seed of MT1's 50 fixed task variants (used when ``randomize_goals`` is off)."""

    def problems(self, env: EnvConfig) -> list[str]:
        out = []
        if self.reward not in METAWORLD_REWARDS:
            out.append(_not_one_of("env.metaworld.reward", self.reward, METAWORLD_REWARDS))
        if self.action_repeat < 1:
            out.append(f"env.metaworld.action_repeat must be >= 1, got {self.action_repeat}")
        if not 0.0 <= self.mesh_lod < 1.0:
            out.append(f"env.metaworld.mesh_lod must lie in [0, 1) (0 = full meshes), got {self.mesh_lod}")
        return out


@dataclass
class LiberoEnvConfig:
    """``env.id: libero``: the LIBERO suites (envs/libero.py; own venv, scripts/setup_libero.sh)."""

    camera: str = "agentview"
    """Camera rendered into the image observation (``agentview`` or ``robot0_eye_in_hand``)."""
    settle_steps: int = 10
    """No-op steps after each reset while the objects settle (OpenVLA's LIBERO evaluation waits 10)."""
    protocol: str = "raw"
    """``raw`` (the camera picture at ``env.image_size``, the gripper action as decoded) or ``openvla`` (the OpenVLA
    paper's evaluation: rendered at ``render_size``, JPEG round trip, Lanczos resize to ``env.image_size``, centre
    crop of 0.9 of the area resized back; the gripper mapped [0, 1] -> [-1, 1], binarised and inverted)."""
    render_size: int = 256
    """``protocol: openvla``: the side the camera renders at before the resize (OpenVLA renders LIBERO at 256)."""
    wrist_camera: bool = False
    """Also give the wrist camera (``robot0_eye_in_hand``, prepared the same way) as a second picture: ``obs["image"]
    [N, 2, S, S, 3]``, third-person first (OpenVLA-OFT's official layout, ``model.num_images: 2``)."""
    state_format: str = "quat"
    """``state_obs``'s robot state: ``quat`` (end-effector position, quaternion, gripper joints: 9 floats) or
    ``axis_angle`` (position, axis-angle, gripper joints: 8 floats, OpenVLA-OFT's proprio input)."""

    def problems(self, env: EnvConfig) -> list[str]:
        out = [f"env.libero.settle_steps must be >= 0, got {self.settle_steps}"] if self.settle_steps < 0 else []
        if self.state_format not in ("quat", "axis_angle"):
            out.append(_not_one_of("env.libero.state_format", self.state_format, ("quat", "axis_angle")))
        if self.protocol not in LIBERO_PROTOCOLS:
            out.append(_not_one_of("env.libero.protocol", self.protocol, LIBERO_PROTOCOLS))
        if self.render_size < 1:
            out.append(f"env.libero.render_size must be >= 1, got {self.render_size}")
        return out


@dataclass
class ManiSkillEnvConfig:
    """``env.id: maniskill``: ManiSkill3 tabletop tasks (envs/maniskill.py; own venv, setup_maniskill.sh)."""

    camera: str = "base_camera"
    """Sensor camera rendered into the image observation."""

    def problems(self, env: EnvConfig) -> list[str]:
        return []


@dataclass
class GymEnvConfig:
    """``env.id: gym``: any gymnasium continuous-control env (``env.task: HalfCheetah-v5`` …) as D x K bins
    (envs/gym_control.py; the MuJoCo envs need the ``mujoco`` extra). Normalisation as CleanRL's continuous PPO."""

    time_limit: Optional[int] = None  # noqa: UP045
    """Episode length cap; null = the env's registered limit (1000 for the MuJoCo locomotion tasks, 100 for
    Pusher). ``env.max_episode_steps`` does not apply to this env."""
    normalize_obs: bool = True
    """Normalise observations by running mean / std (clipped to +-``clip_obs``); the statistics are saved in
    checkpoints, continue on resume and are used frozen by eval."""
    normalize_reward: bool = True
    """Divide rewards by the running std of the discounted return (clipped to +-``clip_reward``). Episode
    returns in the metrics stay raw."""
    clip_obs: float = 10.0
    """Normalised observations are clipped to [-clip_obs, clip_obs]."""
    clip_reward: float = 10.0
    """Scaled rewards are clipped to [-clip_reward, clip_reward]."""
    reward_gamma: Optional[float] = None  # noqa: UP045
    """Discount of the return whose std scales the rewards; null = ``ppo.gamma`` (filled in when loading)."""

    def problems(self, env: EnvConfig) -> list[str]:
        out = []
        if self.time_limit is not None and self.time_limit < 1:
            out.append(f"env.gym.time_limit must be >= 1 (or null: the env's own), got {self.time_limit}")
        for key, value in (("clip_obs", self.clip_obs), ("clip_reward", self.clip_reward)):
            if not value > 0:
                out.append(f"env.gym.{key} must be > 0, got {value}")
        if self.reward_gamma is not None and not 0.0 < self.reward_gamma <= 1.0:
            out.append(f"env.gym.reward_gamma must lie in (0, 1], got {self.reward_gamma}")
        if env.observation != "state":
            out.append("env.id=gym gives state vectors: set env.observation=state")
        if env.max_episode_steps != EnvConfig.max_episode_steps:
            out.append("env.max_episode_steps does not apply to env.id=gym: set env.gym.time_limit")
        return out


@dataclass
class EnvConfig:
    id: str = "structured"
    """Environment: ``structured`` (a task of known per-dim / pairwise structure), ``metaworld``, ``libero`` or
    ``maniskill`` (robot simulators; see ``task``), or ``gym`` (a gymnasium continuous-control env as bins). Settings of one environment live in its own section
    (``env.structured.*``, ``env.metaworld.*`` ...)."""
    task: str = ""
    """Simulator task: MetaWorld ``reach-v3`` (MT1) or ``MT10`` / ``MT50``; LIBERO suite (``libero_spatial``,
    ``libero_object``, ``libero_goal``, ``libero_10``, ``libero_90``); ManiSkill3 env id (``PickCube-v1`` ...);
    gymnasium id for ``gym`` (``HalfCheetah-v5``, ``Pusher-v5``, ``InvertedPendulum-v5`` ...)."""
    num_envs: int = 16
    """Parallel envs in total; each of the N processes steps ``num_envs / N`` of them."""
    action_dims: int = 7
    """D, the number of action dims (a VLA emits 7 action tokens)."""
    num_bins: int = 11
    """K, bins per action dim (a VLA uses 256; an odd K has a 'stay' bin)."""
    observation: str = "state"
    """``state`` (a state vector, for the MLP policies) or ``image`` (a picture + instruction, for a VLA)."""
    image_size: int = 32
    """Side in pixels of the image observation."""
    state_obs: bool = False
    """Simulators: add the robot's proprioceptive state to the image observation (``obs["state"]``)."""
    max_episode_steps: int = 150
    """Simulators: episodes are truncated after this many steps (LIBERO evaluations use 220-520, PickCube
    50-100); the structured task's length is ``env.structured.horizon``."""
    terminate_on_success: bool = False
    """End an episode (terminated) once the task is solved; otherwise it runs to its time limit."""
    vector_mode: str = "sync"
    """Simulators: ``sync`` (one process) or ``async`` (worker processes, forkserver)."""
    structured: StructuredEnvConfig = field(default_factory=StructuredEnvConfig)
    metaworld: MetaWorldEnvConfig = field(default_factory=MetaWorldEnvConfig)
    libero: LiberoEnvConfig = field(default_factory=LiberoEnvConfig)
    maniskill: ManiSkillEnvConfig = field(default_factory=ManiSkillEnvConfig)
    gym: GymEnvConfig = field(default_factory=GymEnvConfig)

    def section(self) -> Any:
        """The settings of ``id`` (``env.<id>``)."""
        return getattr(self, self.id)

    @property
    def episode_limit(self) -> int:
        """The most steps an episode can take (the structured task's horizon, a gymnasium env's time limit, else
        ``max_episode_steps``)."""
        if self.id == "structured":
            return self.structured.horizon
        if self.id == "gym":
            if self.gym.time_limit is not None:
                return self.gym.time_limit
            import gymnasium

            return int(gymnasium.spec(self.task).max_episode_steps or 1000)
        return self.max_episode_steps

    def problems(self) -> list[str]:
        if self.id not in ENV_IDS:
            return [_not_one_of("env.id", self.id, ENV_IDS)]
        out = []
        for key, value, low in (("env.num_envs", self.num_envs, 1), ("env.action_dims", self.action_dims, 1),
                                ("env.num_bins", self.num_bins, 2), ("env.image_size", self.image_size, 1),
                                ("env.max_episode_steps", self.max_episode_steps, 1)):
            if value < low:
                out.append(f"{key} must be >= {low}, got {value}")
        if self.observation not in OBSERVATIONS:
            out.append(_not_one_of("env.observation", self.observation, OBSERVATIONS))
        if self.vector_mode not in VECTOR_MODES:
            out.append(_not_one_of("env.vector_mode", self.vector_mode, VECTOR_MODES))
        if self.id != "structured" and not self.task:
            out.append(f"env.id={self.id!r} needs env.task (e.g. reach-v3, libero_spatial, PickCube-v1, "
                       "HalfCheetah-v5)")
        # one section per environment: settings of another one would silently do nothing
        for other in ENV_IDS:
            if other != self.id and getattr(self, other) != type(getattr(self, other))():
                out.append(f"env.{other}.* is set but env.id={self.id!r}: remove the env.{other} settings "
                           f"or set env.id={other}")
        return out + self.section().problems(self)
