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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoints import layout, load_agent, load_pretrained_agent, pretrained_model, resolve, run_dir_of
from .config import ConfigError, EnvConfig, TrainConfig, merge_settings
from .envs import NoExpertError, make_env, take_obs

if TYPE_CHECKING:
    from .policies.agent import Agent

__all__ = ["evaluate_during_training", "evaluate_policy", "results_markdown", "run_eval", "wilson_interval"]

Z95 = 1.959964
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


# -- the evaluation loop ---------------------------------------------------------------------------
def _check_obs_width(agent: Agent, envs) -> None:
    want = getattr(agent.policy, "obs_dim", None)  # the state policies; a VLA reads pictures
    space = envs.single_observation_space
    if want is not None and getattr(space, "shape", None) and space.shape[0] != want:
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

    if num_episodes < 1 or num_envs < 1:
        raise ValueError("num_episodes and num_envs must be >= 1")
    if agent is None and not expert:
        raise ValueError("give an agent, or expert=True")
    # the harness reads episode ends on the done step; the task itself is unchanged
    env_cfg = dataclasses.replace(env_cfg, structured=dataclasses.replace(env_cfg.structured,
                                                                          autoreset_mode="same_step"))
    video_paths: list[str] = []
    was_training = agent.training if agent is not None else False
    with preserve_rng(), torch.no_grad():
        _seed_all(seed)
        envs = make_env(env_cfg, num_envs, seed=seed)
        try:
            if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) != AutoresetMode.SAME_STEP:
                raise ValueError(f"env {env_cfg.id!r} does not autoreset on the same step (the env contract)")
            if expert and not envs.has_expert:
                raise NoExpertError(f"env.id={env_cfg.id!r} has no scripted expert; set eval.expert=false")
            if agent is not None:  # its bins decoded as it means them, observations as it saw them
                agent.configure_env(envs, evaluation=True)
            if agent is not None and not expert:
                _check_obs_width(agent, envs)
                agent.eval()
            labels = list(envs.task_labels)
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
            max_steps = rounds * (env_cfg.episode_limit + 1) * 4
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


def _clean_videos(directory: Path) -> None:
    if directory.is_dir():
        for old in directory.glob("*.mp4"):
            old.unlink()


def run_eval(cfg: TrainConfig, env_settings: Mapping[str, Any] | None = None,
             command: str | None = None) -> dict[str, Any]:
    """``vla-structppo eval [RECIPE] eval.checkpoint=…``: evaluate, compare, write results, print the table.

    The env is the checkpoint's, with ``env_settings`` — every ``env`` key the recipe or the command line
    set, as a nested mapping — applied on top: a bare ``eval.checkpoint=…`` evaluates where the checkpoint
    was trained, and any key given explicitly wins, even when it names a default value.

    ``eval.checkpoint`` may also be a pretrained VLA (a downloaded model dir or a Hub id such as
    ``openvla/openvla-7b-finetuned-libero-spatial``): it is evaluated as released, on the recipe's env with
    the recipe's model settings, and results go to ``<output_dir>/pretrained-<model name>/eval``."""
    e = cfg.eval
    if not e.checkpoint:
        raise ConfigError("eval needs a checkpoint: eval.checkpoint=runs/<name> (a run dir, a checkpoint dir, "
                          "hf://org/name, or a pretrained model dir / Hub id)")
    t0 = time.perf_counter()
    released = pretrained_model(e.checkpoint)
    if released is not None:
        # a released model: the recipe describes its env and settings; results go to their own dir so the
        # recipe's run dir stays free for the fine-tuning run
        agent, trained = load_pretrained_agent(cfg, released, device=cfg.device)
        where: Path | None = None
        out = Path(cfg.output_dir) / f"pretrained-{Path(released).name}"
    else:
        where = resolve(e.checkpoint)
        agent, trained = load_agent(where, device=cfg.device)
        out = run_dir_of(where) or cfg.run_dir
    env_cfg = merge_settings(trained.env, env_settings or {}, "env")
    eval_dir = out / layout.EVAL
    video_dir = eval_dir / layout.VIDEOS
    _clean_videos(video_dir)
    # state observations have no picture to film: no videos (and no warning on every state-mode eval)
    videos = e.videos if env_cfg.observation == "image" else 0
    common = dict(num_episodes=e.num_episodes, seed=e.seed, num_envs=e.num_envs, deterministic=e.deterministic,
                  temperature=e.temperature, videos=videos, video_dir=video_dir)
    main = evaluate_policy(agent, env_cfg, **common, video_prefix="policy")
    del agent
    compare: dict[str, Any] = {}
    if e.compare:
        other_dir = resolve(e.compare)
        other, _ = load_agent(other_dir, device=cfg.device)
        r = evaluate_policy(other, env_cfg, **common, video_prefix="compare")
        compare[str(e.compare)] = {"checkpoint": str(other_dir), **r}
        del other
    if e.expert:
        r = evaluate_policy(None, env_cfg, **common, expert=True, video_prefix="expert")
        compare["expert"] = {"checkpoint": None, **r}
    results: dict[str, Any] = {
        "checkpoint": str(e.checkpoint), "checkpoint_dir": str(where or released), "env": _env_dict(env_cfg, e.num_envs),
        "deterministic": e.deterministic, "temperature": e.temperature, "seed": e.seed,
        "num_episodes": e.num_episodes, "num_envs": e.num_envs, "tasks": main["tasks"], "overall": main["overall"],
        "videos": [f"videos/{v}" for v in main["videos"]],
    }
    if compare:
        for r in compare.values():
            r["videos"] = [f"videos/{v}" for v in r["videos"]]
        results["compare"] = compare
    results["command"] = command or " ".join(sys.argv)
    results["wall_s"] = time.perf_counter() - t0
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / layout.RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    table = results_markdown(results)
    (eval_dir / layout.RESULTS_MD).write_text(table)
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
    eval_dir = cfg.run_dir / layout.EVAL
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
