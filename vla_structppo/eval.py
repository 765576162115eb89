"""Evaluate a checkpoint on fixed seeds: success rate with a 95% Wilson interval, episode lengths and
returns per task, MP4 videos, side by side with a second checkpoint or the scripted expert.

Protocol (docs/evaluation.md): the env is reset with ``seed`` (env i gets ``seed + i``), torch / numpy /
python are seeded with ``seed`` for sampled actions, and each task's ``num_episodes`` episodes are fixed
*slots* — episode k of the task's env j fills slot ``k * E + j`` (E envs run the task) — so the counted
episodes do not depend on which envs happen to finish first (counting the first completions would favour
short episodes, i.e. early successes). The same checkpoint and seeds give identical results; the global
RNG streams are restored afterwards, so an evaluation during training leaves training bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import ConfigError, EnvConfig, TrainConfig, apply_overrides, config_from_yaml_text
from .train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from .train.agent import Agent

__all__ = ["evaluate_during_training", "evaluate_policy", "find_eval_checkpoint", "load_agent", "main_eval",
           "results_markdown", "run_eval", "wilson_interval"]

Z95 = 1.959964
# files that mark a directory as a checkpoint of the policy (PPO: any; SFT: adapter / full model)
POLICY_MARKERS = ("policy.safetensors", "adapter_config.json", "model.safetensors", "trainer_state.pt")
VIDEO_FPS = 10
# frames are scaled up (nearest) to at least this side so a 32 px observation is watchable
VIDEO_MIN_SIDE = 128


# -- statistics ------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% with the default ``z``).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n, the
    usual outcomes of a small robot evaluation. ``n = 0`` gives the uninformative (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in 0..n={n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # the exact ends at 0/n and n/n, without rounding error
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def _summary(successes: list[bool], lengths: list[float], returns: list[float]) -> dict[str, Any]:
    n, k = len(successes), int(sum(successes))
    lo, hi = wilson_interval(k, n)
    return {"success_rate": k / n if n else 0.0, "ci95": [lo, hi], "episodes": n, "successes": k,
            "mean_length": float(np.mean(lengths)) if n else 0.0,
            "mean_return": float(np.mean(returns)) if n else 0.0}


# -- RNG isolation ---------------------------------------------------------------------------------
@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and python RNG states on exit."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


# -- loading ---------------------------------------------------------------------------------------
def _resolve_path(checkpoint: str | os.PathLike) -> Path:
    """A local path, or ``hf://org/name[@rev]`` pulled by :mod:`vla_structppo.hub` into a local dir."""
    text = str(checkpoint)
    if text.startswith("hf://"):
        try:
            from .hub import resolve_checkpoint  # lazy: the Hub client is only needed for hf:// paths
        except ImportError as err:
            raise CheckpointError(f"{text}: hf:// checkpoints need vla_structppo.hub ({err})") from None
        return Path(resolve_checkpoint(text))
    return Path(checkpoint)


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and any((p / f).exists() for f in POLICY_MARKERS)


def find_eval_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint dir (PPO or SFT), or a run dir (-> ``checkpoints/last``, else its newest checkpoint)."""
    p = _resolve_path(checkpoint)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist (give a run dir such as runs/<name>, "
                              "a checkpoint dir such as runs/<name>/checkpoints/last, or hf://org/name)")
    if _is_checkpoint_dir(p):
        return p
    root = p / "checkpoints"
    if (root / "last").exists():
        return (root / "last").resolve()
    found = sorted((c for c in root.iterdir() if c.is_dir() and c.name.isdigit()), key=lambda c: int(c.name)) \
        if root.is_dir() else []
    if found:
        return found[-1]
    if p.is_dir() and (p / "config.yaml").is_file():
        raise CheckpointError(f"{p} has a config.yaml but no policy weights ({', '.join(POLICY_MARKERS[:3])}) "
                              "and no checkpoints/ dir: the run has not saved a checkpoint yet")
    raise CheckpointError(f"{p} is neither a checkpoint dir (config.yaml + policy weights) nor a run dir "
                          "with checkpoints/")


def run_dir_of(checkpoint_dir: Path) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<n>`` (``last`` resolved), else None."""
    p = checkpoint_dir.resolve()
    if p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file():
        return p.parent.parent
    return None


def _base_model(cfg: TrainConfig) -> str | None:
    """The base VLA a checkpoint's adapter belongs to: its ``model.name_or_path``, else that of the
    checkpoint it was initialised from (a PPO run started from an SFT checkpoint may name neither)."""
    seen = 0
    while not cfg.model.name_or_path and cfg.init_from and seen < 8:
        saved = Path(cfg.init_from) / "config.yaml"
        if not saved.is_file():
            return None
        cfg = config_from_yaml_text(saved.read_text())
        seen += 1
    return cfg.model.name_or_path


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_agent(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[Agent, TrainConfig]:
    """The agent of a checkpoint (a run dir, a checkpoint dir or ``hf://…``) and its config with
    ``overrides`` (e.g. ``env.*`` to evaluate elsewhere) applied; the policy's weights loaded strictly."""
    from .envs import make_env
    from .train.agent import Agent
    from .train.checkpoint import MODULE_FILES, load_module

    where = find_eval_checkpoint(checkpoint)
    cfg = config_from_yaml_text((where / "config.yaml").read_text())
    cfg = apply_overrides(cfg, list(overrides), str(where / "config.yaml"))
    cfg.resume = None
    is_vla = cfg.policy.type == "vla"
    if is_vla:
        # the adapter (or full model) loads with the model: init_from points at this checkpoint
        cfg.model.name_or_path = _base_model(cfg)
        cfg.init_from = str(where)
        cfg.validate()
        from .policies.vla_loading import preflight

        preflight(cfg)  # names a missing adapter / tokenizer file before any weights load
    else:
        missing = [f for f in ("policy.safetensors",) if not (where / f).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {where} is missing {missing}")
    with preserve_rng():  # building modules draws initial weights: leave the caller's RNG alone
        envs = None if is_vla else make_env(cfg.env, 1, seed=cfg.seed)
        try:
            agent = Agent.from_config(cfg, envs)
        finally:
            if envs is not None:
                envs.close()
    if not is_vla:
        agent.load_policy(where)
    for attr, fname in MODULE_FILES.items():  # heads are not needed to act; loaded when present
        module = getattr(agent, attr)
        if module is not None and (where / fname).is_file():
            load_module(module, where / fname)
    agent.to(_device(cfg.device))
    agent.eval()
    return agent, cfg


# -- the evaluation loop ---------------------------------------------------------------------------
# per-env task lists of multi-task envs (the contract's name first; MetaWorld's vector env has env_tasks)
TASK_ATTRS = ("task_names", "env_tasks")


def _task_labels(envs, env_cfg: EnvConfig) -> list[str]:
    """One task label per env index: ``envs.task_names`` / ``envs.env_tasks`` (multi-task envs) else
    the task / env id."""
    n = envs.num_envs
    for obj in (envs, getattr(envs, "unwrapped", None)):
        for attr in TASK_ATTRS:
            names = getattr(obj, attr, None) if obj is not None else None
            if names is not None:
                names = [str(x) for x in names]
                if len(names) != n:
                    raise ValueError(f"env.{attr} has {len(names)} entries for {n} envs")
                return names
    return [env_cfg.task or env_cfg.id] * n


def _first_linear_in(policy: torch.nn.Module) -> int | None:
    for m in policy.modules():
        if isinstance(m, torch.nn.Linear):
            return m.in_features
    return None


def _check_obs_width(agent: Agent, envs) -> None:
    if agent.is_vla:
        return
    space = envs.single_observation_space
    want = _first_linear_in(agent.policy)
    if getattr(space, "shape", None) and want is not None and space.shape[0] != want:
        raise ConfigError(f"the policy reads {want}-wide state vectors but this env gives {space.shape[0]}: "
                          "evaluate on the env the checkpoint was trained on (same env.action_dims / task)")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401 - the encoder imageio's ffmpeg plugin calls
    except ImportError:
        raise ConfigError("MP4 videos need imageio with ffmpeg: pip install 'imageio[ffmpeg]' "
                          "(or set eval.videos=0)") from None

    h, w = frames[0].shape[:2]
    scale = max(1, math.ceil(VIDEO_MIN_SIDE / max(h, w)))
    # H.264 wants sides divisible by 16 (macro blocks): pad rather than let ffmpeg resample
    ph, pw = (-h * scale) % 16, (-w * scale) % 16
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), fps=VIDEO_FPS, codec="libx264", quality=8, macro_block_size=16,
                                ffmpeg_log_level="error")
    try:
        for f in frames:
            f = np.asarray(f, dtype=np.uint8)
            if scale > 1:
                f = f.repeat(scale, 0).repeat(scale, 1)
            if ph or pw:
                f = np.pad(f, ((0, ph), (0, pw), (0, 0)))
            writer.append_data(f)
    finally:
        writer.close()


def evaluate_policy(agent: Agent | None, env_cfg: EnvConfig, *, num_episodes: int, seed: int, num_envs: int,
                    deterministic: bool = True, temperature: float = 1.0, videos: int = 0,
                    video_dir: str | os.PathLike | None = None, expert: bool = False,
                    video_prefix: str = "policy") -> dict[str, Any]:
    """Run exactly ``num_episodes`` episodes per task with ``agent`` (or the scripted expert) on seeds
    from ``seed``; returns ``{"tasks": {task: summary}, "overall": summary, "videos": [paths]}``.

    A summary: ``success_rate, ci95 [lo, hi], episodes, successes, mean_length, mean_return``. An
    episode succeeds if ``info["success"]`` was true at any of its steps (the MetaWorld / LIBERO
    convention). Videos: the first ``videos`` slots of every task, from ``obs["image"]``.
    """
    from gymnasium.vector import AutoresetMode

    from .envs import make_env
    from .train.rollout import take_obs

    if num_episodes < 1 or num_envs < 1:
        raise ValueError("num_episodes and num_envs must be >= 1")
    if agent is None and not expert:
        raise ValueError("give an agent, or expert=True")
    # the harness reads episode ends on the done step; the task itself is unchanged
    env_cfg = dataclasses.replace(env_cfg, autoreset_mode="same_step")
    video_paths: list[str] = []
    was_training = agent.training if agent is not None else False
    with preserve_rng(), torch.no_grad():
        _seed_all(seed)
        envs = make_env(env_cfg, num_envs, seed=seed)
        try:
            if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) != AutoresetMode.SAME_STEP:
                raise ValueError(f"env {env_cfg.id!r} does not autoreset on the same step (the env contract)")
            if expert and not hasattr(envs, "expert_bins"):
                raise ConfigError(f"env.id={env_cfg.id!r} has no scripted expert (expert_bins); "
                                  "set eval.expert=false")
            if agent is not None and not expert:
                _check_obs_width(agent, envs)
                agent.eval()
            labels = _task_labels(envs, env_cfg)
            tasks = list(dict.fromkeys(labels))
            width = {t: labels.count(t) for t in tasks}
            pos = np.array([labels[:i].count(labels[i]) for i in range(num_envs)])
            records: dict[str, dict[int, tuple[bool, float, float]]] = {t: {} for t in tasks}
            done_eps = np.zeros(num_envs, dtype=np.int64)
            ever = np.zeros(num_envs, dtype=bool)
            steps = np.zeros(num_envs, dtype=np.int64)
            ret = np.zeros(num_envs, dtype=np.float64)
            frames: dict[int, list[np.ndarray]] = {}

            def slot(i: int) -> int:
                return int(done_eps[i]) * width[labels[i]] + int(pos[i])

            obs, _ = envs.reset(seed=seed)
            has_image = isinstance(obs, dict) and "image" in obs
            if videos > 0 and not has_image:
                warnings.warn("videos need image observations (env.observation=image): none recorded", stacklevel=2)
            record = videos > 0 and has_image and video_dir is not None
            # generous: every env runs its quota of rounds (+1 for a partial one) of the longest episode
            rounds = max(math.ceil(num_episodes / w) for w in width.values()) + 1
            max_steps = rounds * (max(env_cfg.max_episode_steps, env_cfg.horizon) + 1) * 4
            for _ in range(max_steps):
                if all(len(records[t]) >= num_episodes for t in tasks):
                    break
                if record:
                    for i in range(num_envs):
                        if slot(i) < min(videos, num_episodes):
                            frames.setdefault(i, []).append(np.asarray(obs["image"][i]).copy())
                if expert:
                    actions = np.asarray(envs.expert_bins())
                else:
                    policy = agent.policy  # type: ignore[union-attr]
                    out = policy.act(policy.prepare(obs), deterministic=deterministic, temperature=temperature)
                    actions = out.actions.cpu().numpy()
                obs, reward, terminated, truncated, info = envs.step(actions)
                steps += 1
                ret += np.asarray(reward, dtype=np.float64)
                if "success" in info:
                    ever |= np.asarray(info["success"], dtype=bool)
                done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
                for i in np.nonzero(done)[0]:
                    s, task = slot(i), labels[i]
                    if s < num_episodes:
                        ep = info.get("_episode")
                        own = ep is not None and bool(ep[i])
                        length = float(info["episode_length"][i]) if own and "episode_length" in info else float(steps[i])
                        total = float(info["episode_return"][i]) if own and "episode_return" in info else float(ret[i])
                        records[task][s] = (bool(ever[i]), length, total)
                        if i in frames:
                            final = info.get("final_obs")
                            if final is not None:
                                frames[i].append(np.asarray(take_obs(final, np.array([i]))["image"][0]).copy())
                            name = f"{video_prefix}_{_safe(task)}_ep{s:03d}.mp4"
                            _write_video(Path(video_dir) / name, frames.pop(i))  # type: ignore[arg-type]
                            video_paths.append(name)
                    frames.pop(i, None)
                    done_eps[i] += 1
                    ever[i], steps[i], ret[i] = False, 0, 0.0
            short = {t: len(r) for t, r in records.items() if len(r) < num_episodes}
            if short:
                raise RuntimeError(f"evaluation did not finish {num_episodes} episodes per task within {max_steps} "
                                   f"steps (finished: {short}); do the env's episodes end?")
        finally:
            envs.close()
            if agent is not None and was_training:
                agent.train()
    per_task = {}
    pooled: tuple[list[bool], list[float], list[float]] = ([], [], [])
    for t in tasks:
        eps = [records[t][s] for s in sorted(records[t])]  # slot order: independent of finishing order
        cols = [list(c) for c in zip(*eps)]
        per_task[t] = _summary(*cols)
        for dst, src in zip(pooled, cols):
            dst.extend(src)
    return {"tasks": per_task, "overall": _summary(*pooled), "videos": sorted(video_paths)}


# -- reports ---------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def results_markdown(results: dict[str, Any]) -> str:
    """A per-task table: task | success | 95% CI | episodes | mean length, one block per policy."""
    blocks = [("policy", results)] + [(label, r) for label, r in (results.get("compare") or {}).items()]
    names = [Path(label).name if "/" in label and not label.startswith("hf://") else label for label, _ in blocks]
    head = "| task | " + " | ".join(f"{n}: success | {n}: 95% CI | {n}: episodes | {n}: mean length"
                                     for n in names) + " |"
    rule = "|---|" + "---|---|---|---|" * len(blocks)
    rows = []
    tasks = list(results["tasks"])
    for t in [*tasks, "overall"] if len(tasks) > 1 else tasks:
        cells = []
        for _, r in blocks:
            s = r["overall"] if t == "overall" else r["tasks"].get(t)
            if s is None:
                cells.append("– | – | – | –")
                continue
            lo, hi = s["ci95"]
            cells.append(f"{_pct(s['success_rate'])} ({s['successes']}/{s['episodes']}) | {_pct(lo)} – {_pct(hi)} | "
                         f"{s['episodes']} | {s['mean_length']:.1f}")
        rows.append(f"| {'**overall**' if t == 'overall' else t} | " + " | ".join(cells) + " |")
    mode = "greedy" if results["deterministic"] else f"sampled (T={results.get('temperature', 1.0)})"
    lines = [f"# Evaluation of `{results['checkpoint']}`", "",
             f"{results['num_episodes']} episodes per task, seed {results['seed']}, {mode} actions; "
             "95% Wilson score intervals.", ""]
    if results.get("compare"):
        lines += ["Compared on the same seeds: " + ", ".join(f"`{label}`" for label in results["compare"]), ""]
    lines += [head, rule, *rows, "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def _env_dict(env_cfg: EnvConfig, num_envs: int) -> dict[str, Any]:
    d = dataclasses.asdict(env_cfg)
    d["num_envs"] = num_envs
    return d


def _eval_env(trained: EnvConfig, requested: EnvConfig) -> EnvConfig:
    """The checkpoint's env, with every field the recipe / command line set away from its default
    (``env.task=…`` evaluates elsewhere; a bare ``eval.checkpoint=…`` evaluates where it was trained)."""
    default = EnvConfig()
    changed = {f.name: getattr(requested, f.name) for f in dataclasses.fields(EnvConfig)
               if getattr(requested, f.name) != getattr(default, f.name)}
    return dataclasses.replace(trained, **changed)


def _clean_videos(directory: Path) -> None:
    if directory.is_dir():
        for old in directory.glob("*.mp4"):
            old.unlink()


def run_eval(cfg: TrainConfig) -> dict[str, Any]:
    """``vla-structppo eval [RECIPE] eval.checkpoint=…``: evaluate, compare, write results, print the table."""
    e = cfg.eval
    if not e.checkpoint:
        raise ConfigError("eval needs a checkpoint: eval.checkpoint=runs/<name> (a run dir, a checkpoint dir or "
                          "hf://org/name)")
    t0 = time.perf_counter()
    where = find_eval_checkpoint(e.checkpoint)
    agent, trained = load_agent(where)
    trained.device = cfg.device
    agent.to(_device(cfg.device))
    env_cfg = _eval_env(trained.env, cfg.env)
    out = run_dir_of(where) or cfg.run_dir
    eval_dir = out / "eval"
    video_dir = eval_dir / "videos"
    _clean_videos(video_dir)
    # state observations have no picture to film: no videos (and no warning on every state-mode eval)
    videos = e.videos if env_cfg.observation == "image" else 0
    common = dict(num_episodes=e.num_episodes, seed=e.seed, num_envs=e.num_envs, deterministic=e.deterministic,
                  temperature=e.temperature, videos=videos, video_dir=video_dir)
    main = evaluate_policy(agent, env_cfg, **common, video_prefix="policy")
    del agent
    compare: dict[str, Any] = {}
    if e.compare:
        other, _ = load_agent(e.compare)
        other.to(_device(cfg.device))
        r = evaluate_policy(other, env_cfg, **common, video_prefix="compare")
        compare[str(e.compare)] = {"checkpoint": str(find_eval_checkpoint(e.compare)), **r}
        del other
    if e.expert:
        r = evaluate_policy(None, env_cfg, **common, expert=True, video_prefix="expert")
        compare["expert"] = {"checkpoint": None, **r}
    results: dict[str, Any] = {
        "checkpoint": str(e.checkpoint), "checkpoint_dir": str(where), "env": _env_dict(env_cfg, e.num_envs),
        "deterministic": e.deterministic, "temperature": e.temperature, "seed": e.seed,
        "num_episodes": e.num_episodes, "num_envs": e.num_envs, "tasks": main["tasks"], "overall": main["overall"],
        "videos": [f"videos/{v}" for v in main["videos"]],
    }
    if compare:
        for r in compare.values():
            r["videos"] = [f"videos/{v}" for v in r["videos"]]
        results["compare"] = compare
    results["command"] = " ".join(sys.argv)
    results["wall_s"] = time.perf_counter() - t0
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = results_markdown(results)
    (eval_dir / "results.md").write_text(table)
    results["results_dir"] = str(eval_dir)  # in the returned dict only: where the files went
    print(table)
    return results


def evaluate_during_training(agent: Agent, cfg: TrainConfig, update: int, *, videos: int = 0) -> dict[str, float]:
    """The trainer's periodic evaluation (main process, every ``cfg.eval.every`` updates): ``cfg.eval``'s
    episodes / seed / envs / greedy-or-sampled on ``cfg.env``; writes ``<run_dir>/eval/update_<n>.json``
    and returns ``eval/*`` scalars. The global RNG streams and the agent's train/eval mode are restored,
    so training continues exactly as without it."""
    e = cfg.eval
    t0 = time.perf_counter()
    eval_dir = cfg.run_dir / "eval"
    name = f"update_{update:06d}"
    r = evaluate_policy(agent, cfg.env, num_episodes=e.num_episodes, seed=e.seed, num_envs=e.num_envs,
                        deterministic=e.deterministic, temperature=e.temperature, videos=videos,
                        video_dir=eval_dir / name if videos else None, video_prefix="policy")
    results = {"checkpoint": f"{cfg.run_dir}@update{update}", "update": update,
               "env": _env_dict(cfg.env, e.num_envs), "deterministic": e.deterministic,
               "temperature": e.temperature, "seed": e.seed, "num_episodes": e.num_episodes,
               "num_envs": e.num_envs, "tasks": r["tasks"], "overall": r["overall"],
               "videos": [f"{name}/{v}" for v in r["videos"]], "command": " ".join(sys.argv),
               "wall_s": time.perf_counter() - t0}
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    o = r["overall"]
    metrics = {"eval/success_rate": o["success_rate"], "eval/ci_low": o["ci95"][0], "eval/ci_high": o["ci95"][1],
               "eval/mean_length": o["mean_length"], "eval/mean_return": o["mean_return"],
               "eval/episodes": float(o["episodes"])}
    if len(r["tasks"]) > 1:
        for t, s in r["tasks"].items():
            metrics[f"eval/{_safe(t)}/success_rate"] = s["success_rate"]
    return metrics


def main_eval(cfg: TrainConfig) -> None:
    """The CLI verb: input errors print one line and exit 2 (as ``train`` does)."""
    from .cli import _fail, _user_errors

    try:
        run_eval(cfg)
    except _user_errors() as err:
        _fail(err)
