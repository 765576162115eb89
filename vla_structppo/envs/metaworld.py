"""MetaWorld (a Sawyer arm, 50 manipulation tasks, MuJoCo) as a vector env of the env contract.

``env.task`` is one MT1 task (``reach-v3``, ``drawer-open-v3`` ...) or a benchmark (``MT10``,
``MT50``); with several tasks, env ``j`` runs task ``j % n_tasks`` for its whole life. Actions are bins
``int [N, 4]`` (xyz move of the hand + gripper effort), decoded on the bin grid (vla_structppo/bins.py)
over the simulator's action bounds ``[-1, 1]`` by the shared :class:`~vla_structppo.envs.sim.SimVectorEnv`. Observations: ``observation=image`` gives ``{"image": uint8
[N, S, S, 3] upright, "instruction": [N] str}`` (+ ``"state"``: hand xyz and gripper opening, float32
[N, 4], with ``state_obs``); ``observation=state`` gives MetaWorld's 39-d state (hand, gripper,
objects, previous frame, goal) as float32 [N, 39], which is what the scripted experts read.

Measured facts this module relies on (docs/environments.md, notes/simulators.md):

* rendering goes through one ``mujoco.Renderer`` per env, not gymnasium's ``MujocoRenderer``: freeing
  one of gymnasium's viewers (``env.close()`` or garbage collection) makes every later render in the
  process come out black, while ``mujoco.Renderer`` survives other renderers being closed; it also
  makes its GL context current before each render, so several envs share one process safely;
* 4x MSAA, shadows and reflections are off (~10x faster, images still right);
* a frame's cost on a CPU rasteriser is ~1 us per mesh triangle at any image size: ``env.metaworld.mesh_lod``
  simplifies the meshes for rendering only (envs/mesh_lod.py; 0.04 halves a 64 px frame's cost);
* the corner cameras come out rotated by 180 degrees and are turned upright;
* MT1 freezes each env on one of 50 fixed variants; with ``randomize_goals`` the goal / object
  positions are drawn afresh every episode from the env's own seeded RNG instead;
* ``AsyncVectorEnv`` hangs under the default ``fork`` once the parent holds a GL context: async mode
  uses ``forkserver``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from functools import cache, partial
from typing import Any

import gymnasium as gym
import numpy as np

from ..config import EnvConfig
from ..errors import UserError
from .contract import EnvError, SimulatorMissingError
from .headless_gl import use_headless_gl
from .mesh_lod import simplify_meshes
from .sim import SimVectorEnv, image_obs_space, make_vector

__all__ = [
    "ACTION_DIMS",
    "INSTRUCTIONS",
    "MetaWorldTaskEnv",
    "RenderingUnavailableError",
    "STATE_DIMS",
    "instruction_for",
    "make_metaworld_env",
    "resolve_tasks",
]

INSTALL_HINT = 'install it with `bash scripts/setup_metaworld.sh` (or `pip install -e ".[metaworld]"`)'
APT_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6"
ACTION_DIMS = 4  # xyz move of the hand + gripper effort
STATE_DIMS = 39
PROPRIO_DIMS = 4  # hand xyz + gripper opening: the first 4 entries of the state
BENCHMARKS = ("MT10", "MT50")
# cameras whose picture MuJoCo returns upside down (checked by eye at 128 px on drawer-open-v3)
_ROTATE_180 = frozenset({"corner", "corner2", "corner3", "behindGripper"})

# one sentence per task, in the imperative form VLA prompts use ("What action should the robot take to
# {instruction}?"); names not listed fall back to the task name as words (instruction_for)
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "put the ball into the hoop",
    "bin-picking-v3": "move the cube from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button of the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "put the hand into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate out of the cabinet to the side",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg to the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "push the bottle with the stick",
    "stick-pull-v3": "pull the bottle with the stick",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the goal",
    "reach-wall-v3": "reach the goal behind the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
}


class RenderingUnavailableError(UserError, RuntimeError):
    """MuJoCo cannot render headless here; the message names MUJOCO_GL and the packages to install."""


def instruction_for(task: str) -> str:
    """The instruction sentence of a MetaWorld task (the task name as words when it has none)."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    name = task.rsplit("-v", 1)[0] if task.rsplit("-v", 1)[-1].isdigit() else task
    return name.replace("-", " ").replace("_", " ")


def _import_metaworld():
    use_headless_gl()  # before mujoco is imported (envs/headless_gl.py)
    try:
        import metaworld
        import metaworld.env_dict  # noqa: F401
    except ImportError as err:
        raise SimulatorMissingError(f"env.id=metaworld needs the metaworld package ({err}); {INSTALL_HINT}") from None
    return metaworld


def resolve_tasks(task: str) -> list[str]:
    """``reach-v3`` -> ``["reach-v3"]``; ``MT10`` / ``MT50`` -> the benchmark's task list."""
    _import_metaworld()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

    if task == "MT10":
        return list(MT10_V3)
    if task == "MT50":
        return list(ALL_V3_ENVIRONMENTS)
    if task in ALL_V3_ENVIRONMENTS:
        return [task]
    what = "env.task is empty" if not task else f"unknown MetaWorld task {task!r}"
    raise EnvError(f"{what}; valid: {', '.join(BENCHMARKS)} or one of {', '.join(ALL_V3_ENVIRONMENTS)}")


@cache
def _fixed_variants(task: str, task_seed: int) -> list:
    """MT1's 50 fixed variants of ``task`` (drawn once per process; MT1 seeds them with ``task_seed``)."""
    import metaworld

    return list(metaworld.MT1(task, seed=task_seed).train_tasks)


class MetaWorldTaskEnv(gym.Env):
    """One MetaWorld task in one process: continuous actions, its own time limit and success flag.

    Observation: the 39-d state (float32), or ``{"image"}`` when ``render_images`` (with ``state_obs``
    also ``"state"``: hand xyz and gripper opening, float32 [4]). ``info``:
    ``success`` (the episode has succeeded at this step or before). A worker of
    :func:`make_metaworld_env`.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, *, camera: str = "corner2", image_size: int = 64, max_episode_steps: int = 150,
                 terminate_on_success: bool = False, randomize_goals: bool = True, render_images: bool = True,
                 state_obs: bool = False,
                 task_seed: int = 0, seed: int | None = None, reward: str = "dense", mesh_lod: float = 0.0,
                 action_repeat: int = 1) -> None:
        _import_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS
        from metaworld.policies import ENV_POLICY_MAP
        from metaworld.types import Task

        if task not in ALL_V3_ENVIRONMENTS:
            resolve_tasks(task)  # raises with the valid names
        self.task, self.camera, self.image_size, self.reward_mode = task, camera, image_size, reward
        self.max_episode_steps, self.terminate_on_success = max_episode_steps, terminate_on_success
        self.randomize_goals, self.render_images, self.task_seed = randomize_goals, render_images, task_seed
        self.state_obs = state_obs
        self.mesh_lod, self.action_repeat = mesh_lod, action_repeat
        cls = ALL_V3_ENVIRONMENTS[task]
        # no render_mode: rendering uses a mujoco.Renderer of our own (see the module doc)
        raw = cls()
        # the raw env refuses to step past its 500-step benchmark limit; the time limit is ours
        raw.max_path_length = max(cls.max_path_length, max_episode_steps * action_repeat + 1)
        if randomize_goals:
            # a task with the goal observable (MT1's override), then unfrozen: each reset draws a fresh
            # goal / object position from the env's seeded RNG (raw.seed) instead of a fixed variant
            kwargs = {k: v for k, v in ML1_ARGS_KWARGS[task]["kwargs"].items() if k != "task_id"}
            space = raw._random_reset_space
            data = dict(kwargs, rand_vec=(space.low + space.high) / 2, env_cls=cls, partially_observable=False)
            raw.set_task(Task(env_name=task, data=pickle.dumps(data)))
            raw._freeze_rand_vec = False
            raw.seeded_rand_vec = True
            self._variants: list = []
        else:
            self._variants = _fixed_variants(task, task_seed)
            raw.set_task(self._variants[0])
        self._raw = raw
        self._expert = ENV_POLICY_MAP[task]()
        low, high = raw.action_space.low.astype(np.float32), raw.action_space.high.astype(np.float32)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self._check_camera()  # render() also serves state mode (videos)
        if render_images:
            self.observation_space = image_obs_space(image_size, PROPRIO_DIMS if state_obs else None)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (STATE_DIMS,), np.float32)
        self._renderer = None
        self._rng = np.random.default_rng(seed)
        if seed is not None:
            raw.seed(seed)
        self._state = np.zeros(STATE_DIMS)
        self._t, self._succeeded = 0, False
        self._render_obs = True  # off for a chunk's inner steps (envs/chunking.py): their pictures go unused

    def _check_camera(self) -> None:
        import mujoco

        model = self._raw.model
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera) < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise EnvError(f"MetaWorld has no camera {self.camera!r}; env.metaworld.camera must be one of {names}")

    # -- gymnasium API --------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._raw.seed(seed)
            self._rng = np.random.default_rng(seed)
        if self._variants:
            self._raw.set_task(self._variants[int(self._rng.integers(len(self._variants)))])
        state, _ = self._raw.reset()
        self._state = state
        self._t, self._succeeded = 0, False
        return self._obs(), {"success": False}

    def step(self, action):
        low, high = self.action_space.low, self.action_space.high
        a = np.clip(np.asarray(action, np.float32), low, high)
        reward = 0.0
        for _ in range(self.action_repeat):  # one action, held for action_repeat simulator steps
            state, raw_reward, _, _, raw_info = self._raw.step(a)
            self._state = state
            newly = bool(raw_info["success"]) and not self._succeeded
            self._succeeded |= newly
            # sparse: 1 on the step the task is first solved; dense: the benchmark's reward, summed
            reward += (1.0 if newly else 0.0) if self.reward_mode == "success" else float(raw_reward)
            if self._succeeded and self.terminate_on_success:
                break
        self._t += 1
        terminated = self._succeeded and self.terminate_on_success
        truncated = not terminated and self._t >= self.max_episode_steps
        return self._obs(), float(reward), terminated, truncated, {"success": self._succeeded}

    def render_observations(self, on: bool) -> None:
        """Whether steps render their observation's picture (a chunk's inner steps need none; :meth:`observe`
        renders the current one when it is needed after all)."""
        self._render_obs = bool(on)

    def observe(self):
        """The current observation, rendered."""
        return self._obs(force=True)

    def _obs(self, force: bool = False):
        state = self._state.astype(np.float32)
        if not self.render_images:
            return state
        if not (self._render_obs or force):  # a placeholder the chunk executor replaces if it needs the picture
            image = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            return {"image": image, "state": state[:PROPRIO_DIMS]} if self.state_obs else {"image": image}
        if self.state_obs:
            return {"image": self.render(), "state": state[:PROPRIO_DIMS]}
        return {"image": self.render()}

    def render(self) -> np.ndarray:
        """The camera's upright picture ``uint8 [S, S, 3]``."""
        if self._renderer is None:
            self._renderer = self._make_renderer()
        self._renderer.update_scene(self._raw.data, camera=self.camera)
        img = self._renderer.render()
        if self.camera in _ROTATE_180:
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def _make_renderer(self):
        import mujoco

        model = self._raw.model
        model.vis.quality.offsamples = 0  # no MSAA: must be set before the GL context exists
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
        simplify_meshes(model, self.mesh_lod)  # render-only; the renderer uploads the meshes just below
        try:
            renderer = mujoco.Renderer(model, self.image_size, self.image_size)
        except Exception as err:  # FatalError, ImportError, RuntimeError depending on the GL backend
            gl = os.environ.get("MUJOCO_GL", "<unset>")
            raise RenderingUnavailableError(
                f"rendering unavailable: MuJoCo could not open a headless GL context with MUJOCO_GL={gl} "
                f"({type(err).__name__}: {err}). Set MUJOCO_GL=egl (or osmesa) and install the Mesa libraries: "
                f"apt-get install -y --no-install-recommends {APT_PACKAGES} (or bash scripts/setup_metaworld.sh)"
            ) from None
        # shadows and reflections cost several times the rest of the frame on a CPU rasteriser
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer

    def expert_action(self) -> np.ndarray:
        """The scripted expert's (``metaworld.policies``) continuous action for the current state."""
        with warnings.catch_warnings():
            # the experts' proportional gains saturate by design; metaworld warns about it on every call
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            a = self._expert.get_action(self._state)
        return np.clip(np.asarray(a, np.float64), self.action_space.low, self.action_space.high)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


def _make_task_env(task: str, seed: int, **kwargs: Any) -> MetaWorldTaskEnv:
    """Module-level (picklable) constructor for the async workers."""
    return MetaWorldTaskEnv(task, seed=seed, **kwargs)


def make_metaworld_env(cfg: EnvConfig, num_envs: int, seed: int | None = None, chunk_size: int = 1,
                       group_size: int = 1) -> SimVectorEnv:
    """``num_envs`` MetaWorld envs behind the env contract (bins in, image + instruction or state out).

    Env ``j`` runs task ``j % n_tasks`` of ``cfg.task`` (its ``task_labels[j]``). ``vector_mode=sync``
    steps them one after another in this process (each keeps its renderer); ``async`` runs one per
    worker process (forkserver). ``reset(seed=s)`` seeds env i with ``s + i``; later episodes come from
    each env's own RNG.
    """
    if cfg.action_dims != ACTION_DIMS:
        raise EnvError(f"MetaWorld actions have {ACTION_DIMS} dims (hand xyz move + gripper); set "
                         f"env.action_dims={ACTION_DIMS}, got {cfg.action_dims}")
    tasks = resolve_tasks(cfg.task)
    # env j runs task (j // group_size) % n_tasks: GRPO's groups of envs share a task; without groups, j % n_tasks
    env_tasks = [tasks[(j // group_size) % len(tasks)] for j in range(num_envs)]
    mw = cfg.metaworld
    base = 0 if seed is None else seed
    fns = [partial(_make_task_env, task, base + j, camera=mw.camera, image_size=cfg.image_size,
                   max_episode_steps=cfg.max_episode_steps, terminate_on_success=cfg.terminate_on_success,
                   reward=mw.reward, randomize_goals=mw.randomize_goals, render_images=cfg.observation == "image",
                   state_obs=cfg.state_obs, task_seed=mw.task_seed, mesh_lod=mw.mesh_lod,
                   action_repeat=mw.action_repeat)
           for j, task in enumerate(env_tasks)]
    inner = make_vector(fns, cfg.vector_mode, chunk_size)
    space = inner.single_action_space  # [A], or [H, A] with chunks: every step of a chunk has the same bounds
    low, high = space.low.reshape(-1, ACTION_DIMS)[0], space.high.reshape(-1, ACTION_DIMS)[0]
    return SimVectorEnv(inner, (low.tolist(), high.tolist()), cfg.num_bins, task_labels=env_tasks,
                        instructions=[instruction_for(t) for t in env_tasks], has_expert=True, seed=seed,
                        chunk_size=chunk_size)
