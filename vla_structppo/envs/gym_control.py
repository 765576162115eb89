"""Any gymnasium continuous-control env as a D × K discrete task (``env.id: gym``).

``env.task`` is a gymnasium id (``HalfCheetah-v5``, ``Pusher-v5``, ``Humanoid-v5``, ``InvertedPendulum-v5``,
``Pendulum-v1`` …). Each action dim is cut into ``env.num_bins`` bins on ``linspace(low, high, K)`` of the
env's own action bounds — the :class:`~vla_structppo.bins.BinGrid` every env decodes with — so
Tang & Agrawal's (AAAI 2020) discretised-MuJoCo setting runs on the same trainer as the VLA tasks.

Observations are the env's state vector, normalised and clipped, and rewards scaled, as CleanRL's
continuous PPO does it (:mod:`vla_structppo.envs.normalize`; ``env.gym.*`` switches each off). Episode
returns and lengths in the metrics are the env's raw ones. The normalisation statistics travel with
checkpoints: a resumed run continues them exactly, an evaluation uses them frozen.

The MuJoCo envs need the ``mujoco`` extra (``pip install -e '.[mujoco]'``). For an exact resume the whole
simulator state is saved: MuJoCo's ``mjData`` (copied back with ``mj_copyData``, so even the derived
quantities a reward reads before stepping are the same; see ``_copy_mjdata``), the env's RNG and its
time-limit counter.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import gymnasium as gym
import numpy as np

from ..config import EnvConfig
from .contract import EnvError, SimulatorMissingError
from .headless_gl import use_headless_gl
from .normalize import EnvNormalizer, NormalizationConfig
from .sim import SimVectorEnv, make_vector

__all__ = ["ControlTaskEnv", "GymControlVectorEnv", "check_gym_task", "make_gym_env"]

MUJOCO_INSTALL = "pip install -e '.[mujoco]'  (gymnasium[mujoco]: the MuJoCo envs)"


def check_gym_task(task: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``task``, or an error naming close ids and the install command."""
    if not task:
        raise EnvError("env.task must name a gymnasium env for env.id=gym, e.g. HalfCheetah-v5")
    try:
        spec = gym.spec(task)
    except gym.error.Error:
        import difflib

        close = difflib.get_close_matches(task, list(gym.registry), n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise EnvError(f"unknown gymnasium env {task!r}.{hint} Any registered continuous-control id works "
                       "(HalfCheetah-v5, Hopper-v5, Walker2d-v5, Ant-v5, Humanoid-v5, Pusher-v5, Reacher-v5, "
                       "InvertedPendulum-v5, Pendulum-v1 …)") from None
    entry = str(spec.entry_point)
    if "mujoco" in entry:
        import importlib.util

        use_headless_gl()  # before gymnasium's MuJoCo env imports mujoco (envs/headless_gl.py)

        if importlib.util.find_spec("mujoco") is None:
            raise SimulatorMissingError(f"{task} is a MuJoCo env and mujoco is not installed: {MUJOCO_INSTALL}")
    return spec


class ControlTaskEnv(gym.Wrapper):
    """One gymnasium env with a continuous Box action, whose full state can be saved and restored."""

    def __init__(self, task: str, max_episode_steps: int | None = None) -> None:
        use_headless_gl()  # workers import mujoco here (envs/headless_gl.py)
        env = gym.make(task, max_episode_steps=max_episode_steps)
        if not isinstance(env.action_space, gym.spaces.Box) or len(env.action_space.shape) != 1:
            raise EnvError(f"{task} has action space {env.action_space}: env.id=gym needs a 1-D Box (continuous "
                           "control)")
        if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
            raise EnvError(f"{task} has observation space {env.observation_space}: env.id=gym needs a state vector")
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)

    def _time_limit(self) -> Any:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, gym.wrappers.TimeLimit):
                return env
            env = env.env
        return None

    @property
    def sim_state(self) -> dict[str, Any]:
        """The simulator, RNG and time-limit state; assigning it back continues bit-exactly from there.

        A property so the vector env's ``get_attr`` / ``set_attr`` reach it in sync and async workers alike."""
        raw = self.env.unwrapped
        limit = self._time_limit()
        state: dict[str, Any] = {"rng": raw.np_random.bit_generator.state,
                                 "elapsed": None if limit is None else int(limit._elapsed_steps)}
        if hasattr(raw, "data") and hasattr(raw, "model"):  # MuJoCo: all of mjData (picklable), derived ones too
            state["mjdata"] = np.frombuffer(pickle.dumps(raw.data), np.uint8).copy()
        elif hasattr(raw, "state"):  # classic control keeps its whole state in `state`
            state["state"] = np.array(raw.state, np.float64, copy=True)
        else:
            raise EnvError(f"{raw} keeps no state this adapter can save")
        return state

    @sim_state.setter
    def sim_state(self, state: dict[str, Any]) -> None:
        raw = self.env.unwrapped
        raw.np_random.bit_generator.state = state["rng"]
        limit = self._time_limit()
        if limit is not None and state["elapsed"] is not None:
            limit._elapsed_steps = int(state["elapsed"])
        if "mjdata" in state:
            import mujoco

            saved = pickle.loads(np.asarray(state["mjdata"], np.uint8).tobytes())
            _copy_mjdata(raw.data, raw.model, saved, mujoco)
        else:
            raw.state = np.asarray(state["state"], np.float64).copy()


def _copy_mjdata(dst: Any, model: Any, src: Any, mujoco: Any) -> None:
    """Make ``dst`` equal to ``src`` in place (the env and its renderer keep their ``mjData``): the integration
    state (time, qpos, qvel, act, warm start, controls …) through ``mj_setState``, then every array — the
    derived quantities (body positions, contacts …) a reward may read before the next ``mj_step``."""
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    buffer = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, src, buffer, spec)
    mujoco.mj_setState(model, dst, buffer, spec)
    for name in dir(src):
        if name.startswith("_"):
            continue
        value = getattr(src, name, None)
        if isinstance(value, np.ndarray):
            target = getattr(dst, name)
            if isinstance(target, np.ndarray) and target.shape == value.shape and target.flags.writeable:
                target[...] = value


class GymControlVectorEnv(SimVectorEnv):
    """:class:`SimVectorEnv` of :class:`ControlTaskEnv` with observation / reward normalisation (module doc)."""

    def __init__(self, inner: gym.vector.VectorEnv, bounds: tuple[list[float], list[float]], num_bins: int,
                 task: str, normalization: NormalizationConfig, seed: int | None, chunk_size: int = 1) -> None:
        n = inner.num_envs
        super().__init__(inner, bounds, num_bins, task_labels=[task] * n, instructions=[task] * n,
                         has_expert=False, seed=seed, chunk_size=chunk_size)
        obs_dim = int(self.single_observation_space.shape[0])
        self.normalizer = EnvNormalizer(obs_dim, n, normalization)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return self.normalizer.observations(obs), info

    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)  # episode stats in raw rewards
        if "final_obs" in info:  # the last observation of an episode, with the statistics it was taken under
            info["final_obs"] = self.normalizer.transform(info["final_obs"])
        obs = self.normalizer.observations(obs)
        info["raw_reward"] = reward
        return obs, self.normalizer.rewards(reward, terminated), terminated, truncated, info

    # -- normalisation travels with checkpoints ------------------------------------------------------
    def normalization_state(self) -> dict[str, Any]:
        return self.normalizer.state_dict()

    def load_normalization(self, state: dict[str, Any], *, frozen: bool) -> None:
        """Start from saved statistics: ``frozen`` for evaluation, else they keep updating (``init_from``)."""
        self.normalizer.load_state_dict(state, with_returns=False)
        self.normalizer.frozen = frozen

    # -- exact resume -----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"sims": list(self._inner.get_attr("sim_state")), "normalizer": self.normalizer.state_dict(),
                "frozen": self.normalizer.frozen, "episodes": self._episodes.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        sims = list(state["sims"])
        if len(sims) != self.num_envs:
            raise EnvError(f"the saved state holds {len(sims)} envs, this vector has {self.num_envs}")
        self._inner.set_attr("sim_state", sims)
        self._first_seed = None  # the restored RNGs continue: no seeded reset after a resume
        self.normalizer.load_state_dict(state["normalizer"])
        self.normalizer.frozen = bool(state["frozen"])
        self._episodes.load_state_dict(state["episodes"])


def make_gym_env(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int = 1) -> GymControlVectorEnv:
    """``num_envs`` copies of gymnasium's ``cfg.task`` as bins in, normalised state out (module doc)."""
    spec = check_gym_task(cfg.task)
    limit = cfg.gym.time_limit if cfg.gym.time_limit is not None else spec.max_episode_steps
    probe = ControlTaskEnv(cfg.task, limit)
    low, high = probe.action_space.low.astype(float).tolist(), probe.action_space.high.astype(float).tolist()
    probe.close()
    if cfg.action_dims != len(low):
        raise EnvError(f"{cfg.task} has {len(low)} action dims; set env.action_dims={len(low)} "
                       f"(it is {cfg.action_dims})")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise EnvError(f"{cfg.task} has unbounded actions ({low} .. {high}): bins need finite bounds")
    g = cfg.gym
    norm = NormalizationConfig(observations=g.normalize_obs, rewards=g.normalize_reward, clip_obs=g.clip_obs,
                               clip_reward=g.clip_reward, gamma=0.99 if g.reward_gamma is None else g.reward_gamma)
    factories = [functools.partial(ControlTaskEnv, cfg.task, limit) for _ in range(num_envs)]
    return GymControlVectorEnv(make_vector(factories, cfg.vector_mode, chunk_size), (low, high), cfg.num_bins, cfg.task,
                               norm, seed, chunk_size)
