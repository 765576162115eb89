"""The ``eval`` verb and the trainer's periodic evaluation: results.json / results.md, comparisons, videos."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import layout, load_agent, load_pretrained_agent, pretrained_model, resolve, run_dir_of
from ..config import ConfigError, EnvConfig, TrainConfig, merge_settings
from .episodes import evaluate_policy
from .video import safe_name

if TYPE_CHECKING:
    from ..policies.agent import Agent

__all__ = ["evaluate_during_training", "results_markdown", "run_eval"]


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
            metrics[f"eval/{safe_name(t)}/success_rate"] = s["success_rate"]
    return metrics
