"""Typed run configuration: the single source of defaults (STYLE.md rule 3).

Recipes are YAML files merged strictly onto these dataclasses (OmegaConf structured configs), then
``key.sub=value`` overrides; an unknown key or a wrong type fails with the key's name and the nearest
valid key. :meth:`TrainConfig.validate` checks combinations. Nothing here imports torch: a bad recipe
fails before anything heavy loads.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError

__all__ = [
    "ENV_IDS",
    "TRACKERS",
    "VALUE_NETWORKS",
    "GymEnvConfig",
    "MOVED_ENV_KEYS",
    "ConfigError",
    "CreditConfig",
    "DemosConfig",
    "EnvConfig",
    "EvalConfig",
    "LiberoEnvConfig",
    "ManiSkillEnvConfig",
    "MetaWorldEnvConfig",
    "HeadConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "PPOConfig",
    "PairConfig",
    "PolicyConfig",
    "SFTConfig",
    "StructuredEnvConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_yaml_text",
    "explicit_settings",
    "field_docs",
    "load_config",
    "merge_settings",
    "to_yaml",
]

# Choices, kept here (not imported from algo/ or envs/, which import torch / gymnasium);
# tests/test_config.py checks they equal the ones the code implements.
ENV_IDS = ("structured", "metaworld", "libero", "maniskill", "gym")
VECTOR_MODES = ("sync", "async")
POLICY_TYPES = ("mlp", "ar_mlp", "vla")
VALUE_NETWORKS = ("shared", "separate")
OBSERVATIONS = ("state", "image")
ACTION_TOKEN_MODES = ("auto", "last_k", "add", "openvla")
DTYPES = ("float32", "bfloat16", "float16")
CREDIT_MODES = ("joint", "shared_local", "structured", "counterfactual")
HEAD_MODES = ("shared_local", "structured", "counterfactual")
CENTERINGS = ("policy", "uniform", "none")
RATIOS = ("joint", "action", "token", "token_clip")
DECODINGS = ("autoregressive", "parallel")
ESTIMATORS = ("gae", "grpo")
AGGREGATIONS = ("sample_mean", "token_mean")
ACTION_HEADS = ("tokens", "l1")
SHARED_SOURCES = ("gae", "head")
SURROGATES = ("per_dim", "mean")
BASELINE_SCALES = ("one", "fitted")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
LR_SCHEDULES = ("constant", "linear", "cosine", "adaptive")
DEVICES = ("auto", "cpu", "cuda")
AUTORESET_MODES = ("same_step", "next_step")
HORIZON_ENDS = ("terminate", "truncate")
METAWORLD_REWARDS = ("dense", "success")
LIBERO_PROTOCOLS = ("raw", "openvla")
# keys of the flat ``env`` section before it was split per environment -> the sections that took them
# (old recipes get an error naming the new key; old checkpoints' config.yaml is migrated on load)
MOVED_ENV_KEYS: dict[str, tuple[str, ...]] = {
    **{k: ("structured",) for k in ("horizon", "dim_weights", "pairs", "noise_std", "max_move", "goal_reach",
                                    "num_goals", "autoreset_mode")},
    **{k: ("metaworld",) for k in ("camera", "randomize_goals", "reward", "action_repeat", "mesh_lod")},
    "task_seed": ("structured", "metaworld"),
}


class ConfigError(UserError, ValueError):
    """A recipe or override that cannot run; the message says what to change."""


def _not_one_of(key: str, value: str, options: tuple[str, ...]) -> str:
    return f"{key}={value!r} is not one of {list(options)}{_nearest_hint(value, options)}"


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


@dataclass
class PolicyConfig:
    type: str = "mlp"
    """``mlp`` (independent heads per dim), ``ar_mlp`` (autoregressive over dims) or ``vla`` (see ``model``)."""
    hidden_size: int = 64
    """Width of the policy trunk; also the width of the state feature the heads read."""
    num_layers: int = 2
    """Layers of the policy trunk."""
    value_hidden_size: int = 64
    """Width of the value head MLP."""
    value_stop_gradient: bool = False
    """Detach the state feature for the value head: the value loss never moves the policy's backbone
    (keeps a cloned VLA intact while a fresh value head learns the return scale)."""
    value_network: str = "shared"
    """``shared``: the value head reads the policy's state feature; ``separate`` (state policies): a critic of
    its own on the observation, ``num_layers`` x ``value_hidden_size`` tanh (CleanRL's continuous PPO)."""
    orthogonal_init: bool = False
    """State policies: CleanRL's initialisation (orthogonal, gain sqrt 2 for hidden layers, 0.01 for the policy
    logits, 1 for the separate critic's output) instead of PyTorch's default."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train a LoRA adapter (peft); false = full fine-tuning of the language model."""
    r: int = 32
    """LoRA rank."""
    alpha: int = 64
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout (0 keeps rollout and update log-probs identical)."""
    target_modules: Optional[str] = None  # noqa: UP045
    """Anchored regex of module names to adapt; null = the architecture's language-model linears."""
    include_vision: bool = False
    """Also adapt the vision tower's linears (and train it under full fine-tuning)."""


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None  # noqa: UP045
    """VLM / VLA checkpoint: a local dir (e.g. from scripts/make_tiny_vla.py) or a Hub id."""
    revision: Optional[str] = None  # noqa: UP045
    """Hub revision (branch, tag or commit) of ``name_or_path``."""
    tiny_arch: Optional[str] = None  # noqa: UP045
    """``pipeline`` only: build a tiny random model of this architecture (paligemma, paligemma2, qwen2_5_vl,
    smolvlm, llava) at ``name_or_path`` if nothing is there (offline demo runs)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its author."""
    dtype: str = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16`` (heads and log-probs stay float32)."""
    attn_implementation: Optional[str] = None  # noqa: UP045
    """transformers attention kernel (``sdpa``, ``eager``, ``flash_attention_2`` ...); null = the model's default."""
    action_tokens: str = "auto"
    """Bin tokens: ``auto`` (the model's own: ``openvla`` for OpenVLA checkpoints, else ``last_k``), ``last_k``
    (reuse the last K vocabulary ids), ``add`` (new ``<act_k>`` tokens) or ``openvla`` (OpenVLA's coding)."""
    unnorm_key: Optional[str] = None  # noqa: UP045
    """OpenVLA: the dataset whose action statistics (``norm_stats`` in config.json) un-normalise the actions,
    e.g. ``bridge_orig`` or ``libero_spatial``; null when the checkpoint has one."""
    feature_layer: int = -1
    """Decoder layer whose hidden state at the last prompt token is the state feature (-1 = last)."""
    prompt: str = "In: What action should the robot take to {instruction}?\nOut:"
    """Prompt template; ``{instruction}`` is the env's instruction."""
    rollout_temperature: float = 1.0
    """Temperature of the policy PPO trains: bin logits are divided by it in rollouts AND in the update, so
    the importance ratio is exact (evaluation is greedy or uses ``eval.temperature``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on big models)."""
    num_images: int = 1
    """Pictures per observation (OpenVLA-OFT's official layout: 2 = third-person + wrist camera; the env gives
    ``obs["image"] [N, V, H, W, 3]``)."""
    use_proprio: bool = False
    """OpenVLA-OFT: feed the robot state (``obs["state"]``) as one token through the checkpoint's proprio projector
    (``proprio_projector--*_checkpoint.pt``)."""
    action_head: str = "tokens"
    """``tokens``: act with the LM head's action tokens (what PPO trains). ``l1``: OpenVLA-OFT's L1 regression head
    (``action_head--*_checkpoint.pt``), continuous actions: evaluation and predict only."""
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SFTConfig:
    dataset: Optional[str] = None  # noqa: UP045
    """Demonstrations: a dir written by ``vla-structppo demos`` / ``convert`` (``image``, ``instruction``, ``action``),
    a LeRobot dataset dir (codebase v3.0 or v2.1) or a LeRobot dataset's Hub id (docs/data.md)."""
    image_key: Optional[str] = None  # noqa: UP045
    """LeRobot datasets: the camera feature to clone from (null = the first camera in meta/info.json)."""
    action_key: str = "action"
    """LeRobot datasets: the action feature."""
    dataset_revision: Optional[str] = None  # noqa: UP045
    """LeRobot datasets on the Hub: branch, tag or commit."""
    num_epochs: int = 20
    """Passes over the dataset."""
    batch_size: int = 16
    """Samples per optimizer step."""
    learning_rate: float = 1.0e-3
    """AdamW learning rate of the adapter (or the model under full fine-tuning)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_samples: int = 0
    """Use only the first n samples (0 = all)."""
    bounds: str = "dataset"
    """Action normalisation bounds: ``dataset`` (q01/q99 of its actions) or ``model`` (the checkpoint's)."""
    preprocess: str = "auto"
    """``upfront``: every sample through the processor once, kept in memory (fast epochs); ``per_batch``: each
    minibatch processed when it is drawn (memory holds one batch: datasets larger than memory); ``auto``:
    upfront up to 20,000 samples."""
    chunk_tail: str = "repeat"
    """Action chunks (``action.chunk_size > 1``): a step's target is the next H actions of its episode; near the
    end ``repeat`` fills the chunk with the episode's last action (OpenVLA-OFT's clamped chunk indices), ``drop``
    gives the last H - 1 steps no sample (OFT's released data pipeline) (data/chunks.py)."""


@dataclass
class DemosConfig:
    num_episodes: int = 50
    """Expert episodes to record per task (simulators); the structured task records ``sft.max_samples`` steps."""
    keep_failed: bool = False
    """Keep episodes the expert failed (default: only successful ones)."""
    seed: int = 100_000
    """First episode seed of the demonstrations (disjoint from training and evaluation seeds)."""
    format: str = "datasets"
    """What ``demos`` writes at ``sft.dataset``: ``datasets`` (this project's format) or ``lerobot`` (a LeRobot
    v3.0 dataset that LeRobot's tools read; SFT reads both)."""
    fps: float = 10.0
    """``format: lerobot``: the frame rate recorded in meta/info.json (timestamps are frame_index / fps)."""


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # noqa: UP045
    """Checkpoint (or run dir, or ``hf://org/name[@rev]``) to evaluate."""
    num_episodes: int = 20
    """Episodes per task."""
    seed: int = 1_000_000
    """First episode seed (fixed: the same checkpoint and seeds give identical results)."""
    num_envs: int = 4
    """Parallel envs of the evaluation."""
    deterministic: bool = True
    """Greedy actions (true) or sampled at ``temperature`` (false)."""
    temperature: float = 1.0
    """Sampling temperature when ``deterministic`` is false."""
    videos: int = 2
    """Record this many episodes per task as MP4 (0 = none)."""
    compare: Optional[str] = None  # noqa: UP045
    """A second checkpoint evaluated on the same seeds, side by side."""
    expert: bool = False
    """Also evaluate the scripted expert on the same seeds."""
    every: int = 0
    """During training, evaluate every this many updates (0 = never)."""


@dataclass
class HeadConfig:
    enabled: bool = True
    """Build the structured advantage head (needed by shared_local / structured / counterfactual)."""
    hidden_size: int = 64
    """Width of the head's state trunk."""
    bin_embed_dim: int = 32
    """Width of the bin embedding the per-dim and pairwise terms read."""
    rank: int = 8
    """Rank r of the pairwise bilinear factors."""
    pairwise: bool = True
    """Second-order (pairwise) terms; false = first order only (the note's idea 1)."""
    centering: str = "policy"
    """De-meaning of the terms over each dim's bins: ``policy`` (default), ``uniform`` (BDQ) or ``none``."""
    stop_gradient: bool = True
    """Detach the state feature so the head never trains the policy trunk."""
    fit_epochs: int = 2
    """Head-only regression epochs on each fresh batch."""
    credit_from: str = "previous"
    """Which head gives the credit: ``previous`` (default: the head as it was before seeing this batch, fitted
    afterwards -- its baseline cannot contain the batch's own actions, so counterfactual credit stays unbiased in a
    finite batch) or ``fitted`` (after its regression on this batch, in-sample: it absorbs part of each dim's own
    effect and overfits noise; what earlier versions did -- the late plateau in docs/benchmarks.md)."""


@dataclass
class CreditConfig:
    mode: str = "counterfactual"
    """Per-dim advantages for the actor: ``joint``, ``shared_local``, ``structured``, ``counterfactual``."""
    shared_source: str = "gae"
    """shared_local only: ``A_shared`` from ``gae`` (default) or from the head's state term (``head``)."""
    surrogate: str = "per_dim"
    """shared_local only: ``per_dim`` (each dim its own A_eff) or ``mean`` (the note's scalar form)."""
    ratio: str = "joint"
    """``joint`` importance ratio with per-dim gradient routing (the design), ``token`` (per-token ratio and
    clip, a baseline) or ``token_clip`` (joint importance weight, each dim clipped on its own ratio)."""
    baseline_scale: str = "one"
    """counterfactual only: subtract the head's baseline as it is (``one``) or scaled per dim by its fitted
    control-variate coefficient over the batch, clipped to [0, 1] (``fitted``: never adds variance)."""


@dataclass
class PPOConfig:
    total_timesteps: int = 40_000
    """Env steps to train for, over all processes."""
    num_steps: int = 8
    """Rollout length per env per update (batch = num_envs x num_steps)."""
    num_epochs: int = 4
    """PPO epochs over each batch."""
    num_minibatches: int = 4
    """Minibatches per epoch (each an optimizer step)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per minibatch, accumulated before the optimizer step."""
    learning_rate: float = 3.0e-3
    """Adam learning rate of the policy and value head."""
    head_learning_rate: float = 3.0e-3
    """Adam learning rate of the structured advantage head."""
    value_learning_rate: Optional[float] = None  # noqa: UP045
    """Adam learning rate of the value head; null = ``learning_rate`` (VLA-RL systems use ~3e-3 against
    1e-4 for the LoRA adapter)."""
    lr_schedule: str = "linear"
    """``constant``, ``linear`` (to 0) or ``cosine`` (to 0) over the run's updates; ``adaptive`` steers the
    policy's learning rate so that each update moves the policy by about ``ppo.desired_kl`` (x1.5 when the update's
    KL is under half of it, /1.5 when over twice; within [lr/100, lr*10]), the value and head rates stay constant.
    A step size fixed in policy space rather than parameter space (rsl_rl's schedule); it does not anneal, so a
    converged policy's rate climbs to the cap (docs/algorithm.md, "The update, step by step")."""
    desired_kl: float = 0.01
    """``lr_schedule: adaptive`` only: the KL(old||new) per update to steer to (the mean approx KL of the update's
    minibatches)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """PPO clip epsilon."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values (PPO2)."""
    norm_adv: bool = True
    """Normalise advantages per batch (across ranks), the same affine map for every credit mode."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient c_H."""
    vf_coef: float = 0.5
    """Value loss coefficient c_v."""
    adv_coef: float = 1.0
    """Structured head loss coefficient c_a."""
    lambda_pair: float = 1.0e-3
    """L2 penalty on the pairwise terms."""
    lambda_1: float = 0.0
    """The note's zero-sum penalty on the per-dim terms (matters with centering: none)."""
    lambda_2: float = 0.0
    """L2 penalty on the per-dim terms."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    target_kl: Optional[float] = None  # noqa: UP045
    """Stop the epochs of an update once approx KL exceeds this; null = never."""
    max_nan_updates: int = 3
    """Abort after this many updates in a row with a non-finite loss (each is skipped)."""
    kl_coef: float = 0.0
    """KL penalty to the reference policy (the VLA with its adapter disabled); 0 = off."""
    critic_warmup_updates: int = 0
    """The run's first this many updates train the value (and structured) head only, the policy not at all
    (no gradient, no optimizer step or Adam state; the value head reads detached features): a fresh value
    head's noise would otherwise be the first policy steps' advantage (RL4VLA and RLinf warm their critics
    up the same way)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before GAE (logged episode returns stay in the env's units); e.g.
    0.1 for MetaWorld's dense reward of 0-10 per step."""
    clip_range_high: Optional[float] = None  # noqa: UP045
    """Upper clip: the ratio is clipped to ``[1 - clip_coef, 1 + clip_range_high]`` (clip-higher: 0.28 in
    SimpleVLA-RL / RLinf with clip_coef 0.2); null = ``clip_coef``."""
    dual_clip: Optional[float] = None  # noqa: UP045
    """Dual clip ``c > 1`` (Ye et al. 2020; 3.0 in RLinf): a negative advantage's term is bounded below by ``c A``, so a
    large ratio on a bad action cannot dominate; null = off."""
    loss_aggregation: str = "sample_mean"
    """``sample_mean``: a decision's token terms summed, averaged over decisions (the design); ``token_mean``: every
    counted token weighted alike (SimpleVLA-RL, RLinf: ``sample_mean / D`` when all D tokens count)."""


@dataclass
class LoggingConfig:
    log_every: int = 1
    """Write scalars every this many updates."""
    plot_every: int = 10
    """Write the per-dim bar chart and pairwise heatmap every this many updates (0 = never)."""
    checkpoint_every: int = 10
    """Checkpoint every this many updates (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints to keep (older ones are deleted)."""
    progress_bar: bool = True
    """Show a progress bar (main process only)."""
    report_to: List[str] = field(default_factory=lambda: ["tensorboard"])  # noqa: UP006
    """Trackers (TRL's name), through Accelerate: any of ``tensorboard`` (``<run>/tb``), ``wandb``, ``trackio``,
    ``mlflow``; ``[all]`` = every installed one, ``[none]`` = none. Each gets the scalars, the resolved config as
    hyper-parameters and the credit plots."""
    project: str = "vla-structppo"
    """Project (W&B / trackio project, MLflow experiment) the runs are logged under."""
    offline: bool = False
    """Trackers write only to disk: W&B offline mode under ``<run>/wandb`` (``wandb sync`` later), MLflow to
    ``<run>/mlruns``; trackio and TensorBoard are local anyway."""
    tensorboard: Optional[bool] = None  # noqa: UP045
    """Older spelling: ``false`` drops ``tensorboard`` from ``report_to``, ``true`` adds it."""


@dataclass
class ActionConfig:
    """``action``: what one decision of the policy is (docs/vla.md, "Action chunks")."""

    chunk_size: int = 1
    """H: env steps per decision. The policy emits H x ``env.action_dims`` action tokens at once, the env executes
    them open loop (an episode ending inside the chunk drops the rest) and GAE runs over decisions (OpenVLA-OFT: 8
    on LIBERO, 25 on ALOHA). VLA policies only."""
    decoding: str = "autoregressive"
    """``autoregressive`` (each action token sees the earlier ones; KV-cached decoding) or ``parallel``
    (OpenVLA-OFT: every token from one bidirectional forward over zeroed slots, independent given the
    observation; the architectures with a Llama text model: openvla, llava, idefics3)."""

    def problems(self, cfg: TrainConfig) -> list[str]:
        out = []
        if self.chunk_size < 1:
            out.append(f"action.chunk_size must be >= 1, got {self.chunk_size}")
        if self.decoding not in DECODINGS:
            out.append(_not_one_of("action.decoding", self.decoding, DECODINGS))
        if cfg.policy.type != "vla" and (self.chunk_size > 1 or self.decoding != "autoregressive"):
            out.append(f"action.chunk_size / action.decoding are for VLA policies (policy.type=vla); "
                       f"policy.type={cfg.policy.type!r} acts one step at a time")
        if self.chunk_size > 1 and cfg.env.id == "structured" and cfg.env.structured.autoreset_mode != "same_step":
            out.append("action.chunk_size > 1 needs env.structured.autoreset_mode=same_step (a chunk stops where its "
                       "episode ends)")
        if self.chunk_size > 1 and cfg.env.id == "gym" and cfg.env.gym.normalize_reward:
            out.append("action.chunk_size > 1 with env.id=gym needs env.gym.normalize_reward=false (the chunk's "
                       "per-step rewards are discounted by the trainer, in the env's units)")
        return out


@dataclass
class AdvantageConfig:
    """``advantage``: where the advantage the credit modes split comes from (docs/algorithm.md, "GRPO")."""

    estimator: str = "gae"
    """``gae``: a critic and GAE (``ppo.gamma``, ``ppo.gae_lambda``). ``grpo``: no critic; the envs run in groups of
    ``group_size`` started from the same initial state, one whole episode each, and every decision of an episode
    gets ``(R - mean_group) / (std_group + 1e-6)``, R = its return x ``ppo.reward_scale`` (SimpleVLA-RL, RLinf)."""
    group_size: int = 8
    """GRPO: episodes per group (envs started alike); must divide the envs of every process."""

    def problems(self, cfg: TrainConfig) -> list[str]:
        out = []
        if self.estimator not in ESTIMATORS:
            out.append(_not_one_of("advantage.estimator", self.estimator, ESTIMATORS))
        if self.group_size < 1:
            out.append(f"advantage.group_size must be >= 1, got {self.group_size}")
        elif self.estimator == "grpo" and cfg.env.num_envs % self.group_size:
            out.append(f"advantage.group_size={self.group_size} must divide env.num_envs={cfg.env.num_envs} (every "
                       "group is a block of envs started alike)")
        if self.estimator == "grpo" and cfg.ppo.critic_warmup_updates > 0:
            out.append("ppo.critic_warmup_updates > 0 warms up a critic, and advantage.estimator=grpo has none: set "
                       "it to 0")
        return out


@dataclass
class RolloutConfig:
    """``rollout``: which collected experience an update learns from."""

    filter_groups: Optional[List[float]] = None  # noqa: UP006, UP045
    """GRPO's dynamic sampling: keep only the groups whose success rate lies in ``[low, high]`` (SimpleVLA-RL:
    [0.1, 0.9]; all-fail and all-succeed groups carry no signal); null = keep every group."""

    def problems(self, cfg: TrainConfig) -> list[str]:
        if self.filter_groups is None:
            return []
        band = list(self.filter_groups)
        out = []
        if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
            out.append(f"rollout.filter_groups must be [low, high] with 0 <= low <= high <= 1, got {band}")
        if cfg.advantage.estimator != "grpo":
            out.append("rollout.filter_groups filters GRPO's groups: it needs advantage.estimator=grpo")
        return out




@dataclass
class TrainConfig:
    name: str = "run"
    """Run name: the run directory is ``<output_dir>/<name>``."""
    output_dir: str = "runs"
    """Where run directories go."""
    seed: int = 1
    """Seed of everything (model init, envs, sampling)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu`` or ``cuda``."""
    resume: Optional[str] = None  # noqa: UP045
    """A run dir (its newest checkpoint) or a checkpoint dir to continue exactly from."""
    init_from: Optional[str] = None  # noqa: UP045
    """Start weights (adapter, and heads when present) from this checkpoint, e.g. an SFT run's."""
    overwrite: bool = False
    """Replace an existing run of the same name (deleted once the new run has loaded its model and starts);
    without it a name in use is refused, and ``resume=`` is the way to continue a run."""
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    # -- derived ----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.env.num_envs * self.ppo.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.ppo.total_timesteps // self.env_steps_per_update)

    @property
    def needs_critic(self) -> bool:
        """Whether the advantage estimator uses a value head (GAE does, GRPO does not)."""
        return self.advantage.estimator == "gae"

    @property
    def max_decisions(self) -> int:
        """Decisions an episode can take: its step limit over the chunk size (rounded up)."""
        return -(-self.env.episode_limit // self.action.chunk_size)

    @property
    def env_steps_per_update(self) -> int:
        """Env steps an update collects at most: ``num_envs x num_steps x chunk_size`` (GAE) or every env's episode
        at its longest (GRPO)."""
        if self.advantage.estimator == "grpo":
            return self.env.num_envs * self.max_decisions * self.action.chunk_size
        return self.batch_size * self.action.chunk_size


    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> TrainConfig:
        """Check every combination that cannot run; raise one :class:`ConfigError` listing them all.

        Each section checks its own fields (``EnvConfig.problems`` and the simulators' sections); what
        is left here are choices and combinations across sections."""
        problems: list[str] = list(self.env.problems())
        for section in (self.action, self.advantage, self.rollout):
            problems.extend(section.problems(self))

        def choice(key: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                problems.append(_not_one_of(key, value, options))

        def at_least(pairs: list[tuple[str, float, float]]) -> None:
            problems.extend(f"{key} must be >= {low}, got {value}" for key, value, low in pairs if value < low)

        choice("policy.type", self.policy.type, POLICY_TYPES)
        choice("policy.value_network", self.policy.value_network, VALUE_NETWORKS)
        if self.policy.value_network == "separate" and self.policy.type == "vla":
            problems.append("policy.value_network=separate is for state policies; a VLA's value head reads its "
                            "state feature (policy.value_network=shared)")
        choice("model.action_tokens", self.model.action_tokens, ACTION_TOKEN_MODES)
        choice("model.dtype", self.model.dtype, DTYPES)
        choice("sft.bounds", self.sft.bounds, ("dataset", "model"))
        choice("sft.preprocess", self.sft.preprocess, ("auto", "upfront", "per_batch"))
        choice("sft.chunk_tail", self.sft.chunk_tail, ("repeat", "drop"))
        choice("demos.format", self.demos.format, ("datasets", "lerobot"))
        if not self.demos.fps > 0:
            problems.append(f"demos.fps must be > 0, got {self.demos.fps}")
        choice("head.centering", self.head.centering, CENTERINGS)
        choice("credit.mode", self.credit.mode, CREDIT_MODES)
        choice("credit.ratio", self.credit.ratio, RATIOS)
        choice("credit.shared_source", self.credit.shared_source, SHARED_SOURCES)
        choice("credit.surrogate", self.credit.surrogate, SURROGATES)
        choice("credit.baseline_scale", self.credit.baseline_scale, BASELINE_SCALES)
        choice("head.credit_from", self.head.credit_from, ("fitted", "previous"))
        report = list(self.logging.report_to)
        if any(n in ("all", "none") for n in report) and len(report) > 1:
            problems.append(f"logging.report_to: 'all' and 'none' stand alone, got {report}")
        for name in report:
            if name not in (*TRACKERS, "all", "none"):
                problems.append(_not_one_of("logging.report_to entry", name, (*TRACKERS, "all", "none")))
        choice("ppo.lr_schedule", self.ppo.lr_schedule, LR_SCHEDULES)
        choice("ppo.loss_aggregation", self.ppo.loss_aggregation, AGGREGATIONS)
        choice("model.action_head", self.model.action_head, ACTION_HEADS)
        if self.ppo.clip_range_high is not None and not self.ppo.clip_range_high > 0:
            problems.append(f"ppo.clip_range_high must be > 0 (or null: clip_coef), got {self.ppo.clip_range_high}")
        if self.ppo.dual_clip is not None and not self.ppo.dual_clip > 1:
            problems.append(f"ppo.dual_clip must be > 1 (or null: off), got {self.ppo.dual_clip}")
        if self.model.num_images < 1:
            problems.append(f"model.num_images must be >= 1, got {self.model.num_images}")
        if self.model.action_head == "l1" and self.action.decoding != "parallel":
            problems.append("model.action_head=l1 reads the hidden states of OpenVLA-OFT's parallel-decoded action "
                            "slots: set action.decoding=parallel (and action.chunk_size to the checkpoint's chunk)")
        choice("device", self.device, DEVICES)
        e, p = self.env, self.ppo
        at_least([("eval.num_episodes", self.eval.num_episodes, 1), ("eval.num_envs", self.eval.num_envs, 1),
                  ("eval.videos", self.eval.videos, 0), ("eval.every", self.eval.every, 0),
                  ("demos.num_episodes", self.demos.num_episodes, 1), ("ppo.num_steps", p.num_steps, 1),
                  ("ppo.num_epochs", p.num_epochs, 1), ("ppo.num_minibatches", p.num_minibatches, 1),
                  ("ppo.total_timesteps", p.total_timesteps, 1),
                  ("ppo.gradient_accumulation_steps", p.gradient_accumulation_steps, 1),
                  ("head.rank", self.head.rank, 1), ("policy.hidden_size", self.policy.hidden_size, 1),
                  ("ppo.max_nan_updates", p.max_nan_updates, 1), ("sft.num_epochs", self.sft.num_epochs, 1),
                  ("sft.batch_size", self.sft.batch_size, 1), ("sft.max_samples", self.sft.max_samples, 0),
                  ("ppo.critic_warmup_updates", p.critic_warmup_updates, 0)])
        at_least([("logging.log_every", self.logging.log_every, 1), ("logging.plot_every", self.logging.plot_every, 0),
                  ("logging.checkpoint_every", self.logging.checkpoint_every, 0),
                  ("logging.keep_checkpoints", self.logging.keep_checkpoints, 0),
                  ("policy.num_layers", self.policy.num_layers, 1),
                  ("policy.value_hidden_size", self.policy.value_hidden_size, 1),
                  ("head.hidden_size", self.head.hidden_size, 1), ("head.bin_embed_dim", self.head.bin_embed_dim, 1),
                  ("head.fit_epochs", self.head.fit_epochs, 0), ("seed", self.seed, 0)])
        problems.extend(_non_finite(self))
        problems.extend(_bad_name(self.name))
        if self.eval.temperature <= 0:
            problems.append("eval.temperature must be > 0")
        if self.policy.type == "vla":
            if not self.model.name_or_path and not self.init_from:
                problems.append("policy.type=vla needs model.name_or_path (a VLM / VLA checkpoint dir or Hub id, "
                                "e.g. one written by scripts/make_tiny_vla.py) or init_from")
            if e.observation != "image":
                problems.append("policy.type=vla reads images: set env.observation=image")
            if self.model.lora.r < 1:
                problems.append(f"model.lora.r must be >= 1, got {self.model.lora.r}")
            if self.model.rollout_temperature <= 0:
                problems.append("model.rollout_temperature must be > 0")
            if "{instruction}" not in self.model.prompt:
                problems.append("model.prompt must contain '{instruction}'")
            if p.kl_coef > 0 and not self.model.lora.enabled:
                problems.append("ppo.kl_coef > 0 uses the adapter-disabled model as the reference: it needs "
                                "model.lora.enabled=true")
        elif e.observation == "image":
            problems.append(f"policy.type={self.policy.type!r} reads state vectors: use env.observation=state "
                            "or policy.type=vla")
        if p.desired_kl <= 0:
            problems.append(f"ppo.desired_kl must be > 0, got {p.desired_kl}")
        if p.kl_coef < 0:
            problems.append(f"ppo.kl_coef must be >= 0, got {p.kl_coef}")
        if p.kl_coef > 0 and self.policy.type != "vla":
            problems.append("ppo.kl_coef > 0 needs policy.type=vla (the reference is the VLA without its adapter)")
        if self.credit.mode in HEAD_MODES and not self.head.enabled:
            problems.append(
                f"credit.mode={self.credit.mode!r} reads the structured advantage head but head.enabled=false; "
                "set head.enabled=true or credit.mode=joint"
            )
        micro = p.num_minibatches * p.gradient_accumulation_steps
        if self.batch_size % micro and self.advantage.estimator == "gae":  # GRPO's batches vary with the episodes
            problems.append(
                f"batch num_envs*num_steps={self.batch_size} is not divisible by "
                f"num_minibatches*gradient_accumulation_steps={micro}"
            )
        for key, value in [("ppo.learning_rate", p.learning_rate), ("ppo.head_learning_rate", p.head_learning_rate),
                           ("ppo.clip_coef", p.clip_coef), ("ppo.max_grad_norm", p.max_grad_norm),
                           ("sft.learning_rate", self.sft.learning_rate), ("ppo.reward_scale", p.reward_scale),
                           ("ppo.value_learning_rate", p.value_learning_rate if p.value_learning_rate is not None
                            else 1.0)]:
            if value <= 0:
                problems.append(f"{key} must be > 0, got {value}")
        if self.sft.weight_decay < 0:
            problems.append(f"sft.weight_decay must be >= 0, got {self.sft.weight_decay}")
        if not (0.0 <= p.gamma <= 1.0 and 0.0 <= p.gae_lambda <= 1.0):
            problems.append("ppo.gamma and ppo.gae_lambda must lie in [0, 1]")
        if problems:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
        return self


def _non_finite(cfg: Any, prefix: str = "") -> list[str]:
    """Every float field must be a finite number (nan / inf pass a ``<= 0`` check and fail much later)."""
    out = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out += _non_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{prefix}{f.name} must be a finite number, got {value}")
    return out


def _bad_name(name: str) -> list[str]:
    """A run name is one directory under ``output_dir``: no separators, no ``..``."""
    if not name or name.strip() != name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return [f"name={name!r} must be a plain directory name (letters, digits, - _ .; no '/', not starting with "
                "'.'): the run dir is output_dir/name"]
    return []


# -- loading ------------------------------------------------------------------------------------
def _nearest_hint(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(node: Any, schema: type, prefix: str, source: str) -> None:
    """Unknown keys fail with the full key and the nearest valid one (TRL #3543: silent typos)."""
    if not isinstance(node, (dict, DictConfig)):
        return
    known = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in known and prefix == "env." and key in MOVED_ENV_KEYS:
            where = [f"env.{s}.{key}" for s in MOVED_ENV_KEYS[key]]
            raise ConfigError(f"{source}: {full!r} moved to {' or '.join(where)} (each environment's settings "
                              "live in its own section); rename the key")
        if key not in known:
            options = [f"{prefix}{k}" for k in known]
            raise ConfigError(f"{source}: unknown key {full!r}{_nearest_hint(full, options)} "
                              f"(valid keys here: {', '.join(known)})")
        sub = _dataclass_of(schema, key)
        if sub is not None and isinstance(value, (dict, DictConfig)):
            _check_keys(value, sub, f"{full}.", source)
        elif sub is not None and isinstance(value, (list, ListConfig)):
            for n, item in enumerate(value):
                _check_keys(item, sub, f"{full}[{n}].", source)


def _dataclass_of(schema: type, name: str) -> type | None:
    """The dataclass type of field ``name`` (also inside ``List[...]``), or None."""
    hints = _type_hints(schema)
    tp = hints.get(name)
    if is_dataclass(tp):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        if is_dataclass(arg):
            return arg
    return None


@cache
def _type_hints(schema: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(schema)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key!r}: {msg}") from None


def load_config(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe YAML (optional) + ``a.b=c`` overrides -> a validated :class:`TrainConfig`."""
    merged = OmegaConf.structured(TrainConfig)
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            here = sorted(str(p) for p in Path("recipes").rglob("*.yaml")) if Path("recipes").is_dir() else []
            hint = f" Recipes here: {', '.join(here[:12])}" if here else ""
            raise ConfigError(f"recipe file not found: {str(path)!r}.{hint}")
        try:
            data = OmegaConf.load(path)
        except Exception as err:  # yaml syntax errors
            raise ConfigError(f"{path}: cannot parse YAML: {err}") from None
        if not isinstance(data, DictConfig):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of keys, got {type(data).__name__}")
        if not data:  # an empty file would train for minutes on nothing but defaults
            raise ConfigError(f"{path}: the recipe sets nothing; write the run's settings into it (see "
                              "recipes/structured/quickstart.yaml) or give no recipe and key=value overrides")
        _check_keys(data, TrainConfig, "", str(path))
        merged = _merge(merged, data, str(path))
    merged = _merge_overrides(merged, overrides or [], "")
    try:
        cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"incomplete config: {str(err).splitlines()[0]}") from None
    return _fill_defaults(cfg.validate())


def _fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """Defaults that follow another key, written out so the resolved config.yaml shows the value used."""
    if cfg.env.id == "gym" and cfg.env.gym.reward_gamma is None:
        cfg.env.gym.reward_gamma = cfg.ppo.gamma
    if cfg.logging.tensorboard is not None:  # the older spelling, folded into report_to
        names = [n for n in cfg.logging.report_to if n not in ("tensorboard", "none")]
        cfg.logging.report_to = (["tensorboard"] + names) if cfg.logging.tensorboard else (names or ["none"])
        cfg.logging.tensorboard = None
    return cfg


def _merge_overrides(merged: DictConfig, overrides: list[str] | tuple[str, ...], source: str) -> DictConfig:
    """``key.sub=value`` items merged strictly: unknown keys name the nearest valid one."""
    prefix = f"{source} " if source else ""
    for item in overrides:
        if item.endswith((".yaml", ".yml")) and "=" not in item:
            raise ConfigError(f"{item!r} looks like a recipe after the overrides: the recipe comes first "
                              f"(vla-structppo VERB {item} key.sub=value ...)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        if item.endswith("=") and item.count("=") == 1:
            raise ConfigError(f"override {item!r} gives no value: write {item}VALUE")
        key, _ = item.split("=", 1)
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {err}") from None
        _check_keys(dot, TrainConfig, "", f"{prefix}override {key}")
        merged = _merge(merged, dot, f"{prefix}override {item!r}")
    return merged


def explicit_settings(recipe: str | os.PathLike | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Only the keys the recipe and the overrides set, as a nested dict (no defaults filled in): what a
    user asked for explicitly, e.g. the env an evaluation must run on whatever the checkpoint says.
    Call it after :func:`load_config` has accepted the same recipe and overrides."""
    tree = OmegaConf.load(recipe) if recipe is not None else OmegaConf.create({})
    for item in overrides:
        tree = OmegaConf.merge(tree, OmegaConf.from_dotlist([item]))
    return OmegaConf.to_container(tree, resolve=True)  # type: ignore[return-value]


def merge_settings(section: Any, settings: dict[str, Any], name: str) -> Any:
    """``section`` (a config dataclass such as a checkpoint's ``EnvConfig``) with ``settings`` (a nested
    dict of its keys) merged on top, strictly; an ``EnvConfig`` is checked again."""
    if not settings:
        return section
    _check_keys(settings, type(section), f"{name}.", "override")
    merged = OmegaConf.to_object(_merge(OmegaConf.structured(section), settings, name))
    problems = merged.problems() if hasattr(merged, "problems") else []
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return merged


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...], source: str = "") -> TrainConfig:
    """``key.sub=value`` overrides on an existing config (e.g. a checkpoint's), validated."""
    if not overrides:
        return cfg
    return _fill_defaults(OmegaConf.to_object(_merge_overrides(OmegaConf.structured(cfg), overrides, source)).validate())  # type: ignore[union-attr]


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved with every run; ``vla-structppo config`` prints it)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml_text(text: str) -> TrainConfig:
    """Strictly rebuild a config saved by :func:`to_yaml` (checkpoints; older layouts are migrated)."""
    data = _migrate_saved(OmegaConf.create(text))
    _check_keys(data, TrainConfig, "", "saved config")
    return _fill_defaults(OmegaConf.to_object(_merge(OmegaConf.structured(TrainConfig), data, "saved config")).validate())  # type: ignore[union-attr]


def _migrate_saved(data: DictConfig) -> DictConfig:
    """A config saved before ``env`` was split per environment: each moved key goes into the section of
    the run's own ``env.id`` when it belongs there, and is dropped otherwise (it had no effect then)."""
    env = data.get("env") if isinstance(data, DictConfig) else None
    if not isinstance(env, DictConfig) or not any(k in env for k in MOVED_ENV_KEYS):
        return data
    env_id = env.get("id", EnvConfig.id)
    for key in [k for k in env if k in MOVED_ENV_KEYS]:
        value = env.pop(key)
        if env_id in MOVED_ENV_KEYS[key]:
            if env_id not in env:
                env[env_id] = {}
            env[env_id][key] = value
    return data


@cache
def field_docs(schema: type = TrainConfig) -> dict[str, str]:
    """``{"ppo.clip_coef": "PPO clip epsilon.", ...}`` from the docstring under each field."""
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(schema))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[attr-defined]
    for f in fields(schema):
        sub = _dataclass_of(schema, f.name)
        if sub is not None:
            for k, v in field_docs(sub).items():
                docs[f"{f.name}.{k}"] = v
    return docs
