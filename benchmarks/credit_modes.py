"""Credit modes compared: every mode (plus the per-token ratio) x a structured and an unstructured task x
several seeds. Prints a table (env samples to reach 90% of the optimal return with a 95% CI, final
normalised return, wall time) and writes a learning-curve PNG.

    OMP_NUM_THREADS=1 python benchmarks/credit_modes.py --seeds 5 --workers 2 --out docs/img/credit_modes.png

Runs that never reach 90% count at the budget (censored) and are reported as such.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from stats import mean_ci, samples_to, t95  # benchmarks/ is on the path: the scripts run from there

VARIANTS = {  # label -> overrides
    "joint": ["credit.mode=joint"],
    "joint / token ratio": ["credit.mode=joint", "credit.ratio=token"],
    "shared_local": ["credit.mode=shared_local"],
    "structured": ["credit.mode=structured"],
    "counterfactual": ["credit.mode=counterfactual"],
}
TASKS = {
    "structured": "recipes/structured/counterfactual.yaml",  # sparse dims + pairs (credit mode is overridden)
    "unstructured": "recipes/structured/unstructured.yaml",  # uniform additive
}


def run_one(job: tuple[str, str, int, int]) -> dict:
    task, variant, seed, budget = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from vla_structppo.config import load_config
    from vla_structppo.train.ppo import train

    out = tempfile.mkdtemp(prefix="bench-")
    cfg = load_config(TASKS[task], [*VARIANTS[variant], f"seed={seed}", f"ppo.total_timesteps={budget}",
                                    f"output_dir={out}", "name=run", "logging.progress_bar=false",
                                    "logging.tensorboard=false", "logging.plot_every=0",
                                    "logging.checkpoint_every=0"])
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    curve = [(r["charts/global_step"], r["rollout/normalized_return"]) for r in result.history]
    return {"task": task, "variant": variant, "seed": seed, "wall": wall, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=24000, help="env steps per run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="docs/img/credit_modes.png")
    args = ap.parse_args()

    jobs = [(t, v, s, args.budget) for t in TASKS for v in VARIANTS for s in range(1, args.seeds + 1)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    total = time.perf_counter() - t0

    print(f"\n{len(jobs)} runs, {args.seeds} seeds, budget {args.budget} env steps, {total / 60:.1f} min total\n")
    print("| task | credit | env steps to 90% of optimal (mean ± 95% CI) | reached | final normalised return | wall s/run |")
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        for variant in VARIANTS:
            rs = [r for r in results if r["task"] == task and r["variant"] == variant]
            reach = [samples_to(r["curve"], 0.9, args.budget) for r in rs]
            steps_m, steps_ci = mean_ci([s for s, _ in reach])
            final_m, final_ci = mean_ci([sum(v for _, v in r["curve"][-3:]) / 3 for r in rs])
            wall_m, _ = mean_ci([r["wall"] for r in rs])
            hit = sum(ok for _, ok in reach)
            print(f"| {task} | {variant} | {steps_m:,.0f} ± {steps_ci:,.0f} | {hit}/{len(rs)} | "
                  f"{final_m:.3f} ± {final_ci:.3f} | {wall_m:.1f} |")
    plot(results, args.out)
    print(f"\nlearning curves: {args.out}")


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4), dpi=90, sharey=True)
    for ax, task in zip(np.atleast_1d(axes), TASKS):
        for variant in VARIANTS:
            rs = [r for r in results if r["task"] == task and r["variant"] == variant]
            steps = np.array([s for s, _ in rs[0]["curve"]])
            vals = np.array([[v for _, v in r["curve"]] for r in rs])
            m = vals.mean(0)
            ci = t95(len(rs) - 1) * vals.std(0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else 0 * m
            ax.plot(steps, m, label=variant)
            ax.fill_between(steps, m - ci, m + ci, alpha=0.2)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{task} task (D=7, K=11)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("normalised return (1 = optimal)")
        ax.set_ylim(-0.5, 1.05)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
