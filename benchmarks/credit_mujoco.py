"""Per-dimension credit on discretised MuJoCo, Tang & Agrawal (AAAI 2020)'s protocol (recipes/gym/mujoco.yaml).

Each action dim is cut into K=11 bins; a 64x64 tanh MLP with independent categorical heads is trained with
CleanRL's continuous-PPO settings (2,048 samples per update, 10 epochs x 32 minibatches, lr 3e-4 annealed,
clip 0.2, γ 0.99, λ 0.95, no entropy bonus). Seeds are paired across modes: the modes differ only in
``credit.mode`` (``joint`` runs with the head off, so its cost is not charged to the baseline).

    OMP_NUM_THREADS=1 python benchmarks/credit_mujoco.py                      # default tier, <= 25 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/credit_mujoco.py --full               # 7 tasks x 4 modes x 3 seeds, 1M
    OMP_NUM_THREADS=1 python benchmarks/credit_mujoco.py --full --tasks HalfCheetah-v5 Humanoid-v5 \
        --modes joint counterfactual                                          # the part a CPU box can afford

Default tier: Pusher-v5 (D=7, the VLA's D) and HalfCheetah-v5 (D=6), 150k steps, 5 seeds, joint vs
counterfactual. Every finished run is written to ``--results`` as JSON and skipped when found there, so
a long ``--full`` run can be stopped and continued; ``--report`` only aggregates what is there.

Metrics, as CleanRL reports them: the final return is the mean of the last 100 training episodes of a run
(from the per-update means weighted by their episode counts), mean ± std over seeds; the paired difference
counterfactual − joint per seed, with a 95% t interval; the mean return over the whole run (sample
efficiency); wall time and env steps per second; for head modes the mean share of the advantage's
variance the head puts on action terms (``credit/action_variance_share``) and leaves unexplained.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from stats import mean_std, paired_ci  # benchmarks/ is on the path: the scripts run from there

RECIPE = "recipes/gym/mujoco.yaml"
MODES = {  # label -> overrides
    "joint": ["credit.mode=joint", "head.enabled=false"],
    "counterfactual": ["credit.mode=counterfactual"],
    "counterfactual, fitted scale": ["credit.mode=counterfactual", "credit.baseline_scale=fitted"],
    # credit from the head after it has fitted the batch it scores (in-sample; the default is the head before)
    "counterfactual, in-sample head": ["credit.mode=counterfactual", "head.credit_from=fitted"],
    "joint / token ratio": ["credit.mode=joint", "head.enabled=false", "credit.ratio=token"],
    # each dim's clip decided by its own ratio (the late plateau, docs/benchmarks.md); joint credit with the same
    # clip is its control: what the clip alone changes
    "joint / token clip": ["credit.mode=joint", "head.enabled=false", "credit.ratio=token_clip"],
    "counterfactual / token clip": ["credit.mode=counterfactual", "credit.ratio=token_clip"],
    "counterfactual / token ratio": ["credit.mode=counterfactual", "credit.ratio=token"],
    "structured": ["credit.mode=structured"],
}
DEFAULT = {"tasks": ["Pusher-v5", "HalfCheetah-v5"], "modes": ["joint", "counterfactual"], "seeds": 5,
           "steps": 150_000}
FULL = {"tasks": ["Reacher-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Pusher-v5", "Ant-v5", "Humanoid-v5"],
        "modes": ["joint", "counterfactual", "joint / token ratio", "structured"], "seeds": 3, "steps": 1_000_000}
# CleanRL's Gaussian PPO (ppo_continuous_action.py), 1M steps, v4 envs, 3 seeds: its published benchmark
CLEANRL_GAUSSIAN = {"HalfCheetah": "1442.6 ± 46.0", "Hopper": "2382.9 ± 271.7", "Walker2d": "2288.0 ± 571.8",
                    "Humanoid": "716.1 ± 49.1", "Pusher": "−40.4 ± 7.2"}


def action_dims(task: str) -> int:
    import gymnasium as gym

    env = gym.make(task)
    try:
        return int(env.action_space.shape[0])
    finally:
        env.close()


def run_one(job: tuple[str, str, int, int, str]) -> dict:
    task, mode, seed, steps, results = job
    path = result_path(results, task, mode, seed, steps)
    if path.is_file():
        return json.loads(path.read_text())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from vla_structppo.config import load_config
    from vla_structppo.train.ppo import train

    out = tempfile.mkdtemp(prefix="credit-mujoco-")
    cfg = load_config(RECIPE, [f"env.task={task}", f"env.action_dims={action_dims(task)}", *MODES[mode],
                               f"seed={seed}", f"ppo.total_timesteps={steps}", f"output_dir={out}", "name=run",
                               "logging.progress_bar=false", "logging.tensorboard=false", "logging.plot_every=0",
                               "logging.checkpoint_every=0"])
    t0 = time.perf_counter()
    history = train(cfg).history
    wall = time.perf_counter() - t0
    keep = ("charts/global_step", "rollout/ep_return_mean", "rollout/episodes", "credit/action_variance_share",
            "credit/residual_variance_share", "credit/state_variance_share", "credit/actor_variance_ratio",
            "credit/explained_variance_head", "losses/explained_variance", "losses/entropy")
    record = {"task": task, "mode": mode, "seed": seed, "steps": steps, "wall": wall,
              "history": [{k: r[k] for k in keep if k in r} for r in history]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    print(f"[done] {task} {mode} seed {seed}: final {final_return(record):.1f}, {wall / 60:.1f} min", flush=True)
    return record


def result_path(results: str, task: str, mode: str, seed: int, steps: int) -> Path:
    slug = mode.replace(" / ", "-").replace(", ", "-").replace(" ", "_")
    return Path(results) / f"{task}_{slug}_s{seed}_{steps}.json"


def _episodes(record: dict) -> list[tuple[float, float]]:
    """``(mean return, episode count)`` per update that finished episodes."""
    return [(r["rollout/ep_return_mean"], r["rollout/episodes"]) for r in record["history"]
            if r.get("rollout/episodes", 0) > 0]


def final_return(record: dict, last: int = 100) -> float:
    """Mean of the last ``last`` training episodes (the boundary update counts in part)."""
    total, count = 0.0, 0.0
    for mean, n in reversed(_episodes(record)):
        take = min(n, last - count)
        total += mean * take
        count += take
        if count >= last:
            break
    return total / count if count else float("nan")


def whole_run_return(record: dict) -> float:
    eps = _episodes(record)
    n = sum(c for _, c in eps)
    return sum(m * c for m, c in eps) / n if n else float("nan")


def paired(diffs: list[float]) -> str:
    """Per-seed differences: their mean and 95% interval (one pair: the difference alone)."""
    m, lo, hi = paired_ci(diffs)
    return f"{m:+.1f}" if len(diffs) < 2 else f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _mean_metric(record: dict, key: str) -> float:
    xs = [r[key] for r in record["history"] if key in r and not math.isnan(r[key])]
    return sum(xs) / len(xs) if xs else float("nan")


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.1f}" if math.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"  # one seed: no spread to show


def report(records: list[dict]) -> str:
    lines = ["| task (D) | mode | seeds | final return (last 100 eps) | whole-run return | mode − joint, final "
             "(paired, 95% CI) | action variance share | unexplained share | actor variance ratio | min/run | SPS | "
             "CleanRL Gaussian PPO (1M) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    tasks = sorted({r["task"] for r in records}, key=lambda t: FULL["tasks"].index(t) if t in FULL["tasks"] else 99)
    for task in tasks:
        for mode in MODES:
            rs = sorted((r for r in records if r["task"] == task and r["mode"] == mode), key=lambda r: r["seed"])
            if not rs:
                continue
            steps = rs[0]["steps"]
            finals = [final_return(r) for r in rs]
            whole = [whole_run_return(r) for r in rs]
            fm, fs = mean_std(finals)
            wm, ws = mean_std(whole)
            diff = ""
            if mode != "joint":
                joint = {r["seed"]: r for r in records if r["task"] == task and r["mode"] == "joint"
                         and r["steps"] == steps}
                pairs = [final_return(r) - final_return(joint[r["seed"]]) for r in rs if r["seed"] in joint]
                diff = paired(pairs) if pairs else ""
            share = [_mean_metric(r, "credit/action_variance_share") for r in rs]
            resid = [_mean_metric(r, "credit/residual_variance_share") for r in rs]
            share_s = f"{mean_std(share)[0]:.3f}" if not math.isnan(share[0]) else "—"
            resid_s = f"{mean_std(resid)[0]:.3f}" if not math.isnan(resid[0]) else "—"
            ratio = [_mean_metric(r, "credit/actor_variance_ratio") for r in rs]
            ratio_s = f"{mean_std(ratio)[0]:.3f}" if not math.isnan(ratio[0]) else "—"
            wall = mean_std([r["wall"] for r in rs])[0]
            sps = steps / wall
            name = task.split("-")[0]
            ref = CLEANRL_GAUSSIAN.get(name, "") if mode == "joint" and steps >= 1_000_000 else ""
            lines.append(f"| {task} ({action_dims(task)}) | {mode} | {len(rs)} × {steps // 1000}k | {_pm(fm, fs)} | "
                         f"{_pm(wm, ws)} | {diff} | {share_s} | {resid_s} | {ratio_s} | {wall / 60:.1f} | {sps:.0f} | "
                         f"{ref} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the full tier (hours): 7 tasks, 4 modes, 3 seeds, 1M")
    ap.add_argument("--tasks", nargs="+")
    ap.add_argument("--modes", nargs="+", choices=list(MODES))
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--seed-list", type=int, nargs="+",
                    help="run exactly these seeds (e.g. to split one tier over two processes); overrides --seeds")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", default="benchmarks/results/credit_mujoco")
    ap.add_argument("--report", action="store_true", help="only aggregate the results already in --results")
    args = ap.parse_args()
    tier = FULL if args.full else DEFAULT
    tasks, modes = args.tasks or tier["tasks"], args.modes or tier["modes"]
    seeds, steps = args.seeds or tier["seeds"], args.steps or tier["steps"]
    jobs = [(t, m, s, steps, args.results) for s in (args.seed_list or range(1, seeds + 1)) for t in tasks for m in modes]
    if args.report:
        records = [json.loads(p.read_text()) for j in jobs if (p := result_path(*j[4:], *j[:3], j[3])).is_file()]
    else:
        t0 = time.perf_counter()
        # seeds outermost and modes interleaved: a stopped run leaves complete pairs, contenders share the load
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            records = pool.map(run_one, jobs, chunksize=1)
        print(f"\n{len(jobs)} runs in {(time.perf_counter() - t0) / 60:.1f} min ({args.workers} workers)\n")
    print(report(records))


if __name__ == "__main__":
    main()
