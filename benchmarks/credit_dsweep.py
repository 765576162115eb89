"""Per-dim credit as the action gets wide: target matching with D = 7 … 128 dims, joint vs counterfactual.

The structured task with every dim its own target (weight 1, no pairs, reward noise 0.1, K=11 bins, 8 goal
contexts): the setting of Wu et al. (ICLR 2018), where the advantage of dim i is drowned by the other D − 1 dims'
contributions and an action-dependent baseline is predicted to pay. Horizon 1 (a bandit) and a short horizon
(3 steps, credit through GAE). A 2 x 256 tanh MLP (wide enough for 128 independent dims), 64 envs, PPO 4 epochs x
4 minibatches, lr 1e-3 with early stopping at KL 0.05 (at D=128 a D=7 learning rate moves the joint log-ratio
by ~200 in one update); counterfactual uses a first-order head (the task has no pairs; a pairwise head costs
O(D²) per sample). Seeds are paired; the modes differ only in credit.

    OMP_NUM_THREADS=1 python benchmarks/credit_dsweep.py --seeds 3 --workers 2 --out docs/img/credit_dsweep.png
    OMP_NUM_THREADS=1 python benchmarks/credit_dsweep.py --report     # table + figure from every finished run

Metric: env steps until the mean normalised return of 3 consecutive updates reaches 0.9 (runs that never do
count at the budget, marked censored), per run; counterfactual ÷ joint per seed, geometric mean with a 95%
t interval on the log ratios. Results per run go to ``--results`` (re-runs skip finished runs).
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

from stats import geometric_mean_ci, samples_to  # benchmarks/ is on the path: the scripts run from there

DIMS = (7, 16, 32, 64, 128)
HORIZONS = (1, 3)
MODES = {"joint": ["credit.mode=joint", "head.enabled=false"],
         "counterfactual": ["credit.mode=counterfactual", "head.pairwise=false"]}


def budget(dims: int, horizon: int, scale: float) -> int:
    return int(scale * 8_000 * math.sqrt(dims) * (1 if horizon == 1 else 1.5))


def tag(hidden: int, lr: float, target_kl: float | None, goals: int, ratio: str) -> str:
    """The settings part of a result file's name (``--report`` aggregates one setting)."""
    return f"w{hidden}_lr{lr}_kl{target_kl}_g{goals}" + ("" if ratio == "joint" else f"_ratio-{ratio}")


def run_one(job: tuple[int, int, str, int, int, int, float, float | None, int, str, str]) -> dict:
    dims, horizon, mode, seed, steps, hidden, lr, target_kl, goals, results, ratio = job
    path = Path(results) / f"d{dims}_h{horizon}_{mode}_s{seed}_{steps}_{tag(hidden, lr, target_kl, goals, ratio)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from vla_structppo.config import load_config
    from vla_structppo.train.ppo import train

    out = tempfile.mkdtemp(prefix="dsweep-")
    cfg = load_config(None, [
        "env.id=structured", f"env.action_dims={dims}", "env.num_bins=11", "env.num_envs=64",
        f"env.structured.horizon={horizon}", "env.structured.noise_std=0.1", f"env.structured.num_goals={goals}",
        f"ppo.num_steps={4 if horizon == 1 else horizon}", f"ppo.total_timesteps={steps}", "ppo.num_epochs=4",
        "ppo.num_minibatches=4", f"ppo.learning_rate={lr}", "ppo.head_learning_rate=3e-3", "head.fit_epochs=4",
        f"policy.hidden_size={hidden}", f"policy.value_hidden_size={hidden}", *MODES[mode], f"seed={seed}",
        *([f"ppo.target_kl={target_kl}"] if target_kl else []), f"credit.ratio={ratio}",
        f"output_dir={out}", "name=run", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.plot_every=0", "logging.checkpoint_every=0"])
    t0 = time.perf_counter()
    history = train(cfg).history
    record = {"dims": dims, "horizon": horizon, "mode": mode, "seed": seed, "steps": steps,
              "wall": time.perf_counter() - t0,
              "curve": [(r["charts/global_step"], r["rollout/normalized_return"]) for r in history],
              "actor_variance_ratio": _late(history, "credit/actor_variance_ratio"),
              "action_variance_share": _late(history, "credit/action_variance_share")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    reached, hit = samples_to(record["curve"], 0.9, steps)
    print(f"[done] D={dims} H={horizon} {mode} seed {seed}: {f'{reached:.0f}' if hit else 'censored'} "
          f"({record['wall'] / 60:.1f} min)", flush=True)
    return record


def _late(history: list[dict], key: str) -> float:
    xs = [r[key] for r in history[len(history) // 2:] if key in r and not math.isnan(r[key])]
    return sum(xs) / len(xs) if xs else float("nan")


def final_return(curve) -> float:
    """Mean normalised return of the last 3 updates: where a run levels off."""
    tail = curve[-3:]
    return sum(v for _, v in tail) / len(tail)


def summarise(records: list[dict]) -> tuple[str, list[dict]]:
    rows, lines = [], ["| D | horizon | budget | joint: steps to 90% (reached) | counterfactual: steps to 90% "
                       "(reached) | counterfactual ÷ joint (95% CI) | to 70%: counterfactual ÷ joint (95% CI) | "
                       "final return: joint / counterfactual | actor variance ratio | action share |",
                       "|---|---|---|---|---|---|---|---|---|---|"]
    for horizon in HORIZONS:
        for dims in DIMS:
            by = {m: {r["seed"]: r for r in records if r["dims"] == dims and r["horizon"] == horizon
                      and r["mode"] == m} for m in MODES}
            seeds = sorted(set(by["joint"]) & set(by["counterfactual"]))
            if not seeds:
                continue
            steps = by["joint"][seeds[0]]["steps"]
            res = {m: [samples_to(by[m][s]["curve"], 0.9, steps) for s in seeds] for m in MODES}
            ratios = [c[0] / j[0] for c, j in zip(res["counterfactual"], res["joint"], strict=True)]
            g, lo, hi = geometric_mean_ci(ratios)
            cells = []
            for m in MODES:
                xs = [x for x, _ in res[m]]
                cells.append(f"{sum(xs) / len(xs):,.0f} ({sum(h for _, h in res[m])}/{len(seeds)})")
            # early speed, apart from where each mode levels off: steps to 70% of optimal
            res70 = {m: [samples_to(by[m][s]["curve"], 0.7, steps) for s in seeds] for m in MODES}
            g70, lo70, hi70 = geometric_mean_ci([c[0] / j[0] for c, j in zip(res70["counterfactual"], res70["joint"],
                                                                              strict=True)])
            final = {m: sum(final_return(by[m][s]["curve"]) for s in seeds) / len(seeds) for m in MODES}
            cf = [by["counterfactual"][s] for s in seeds]
            avr = sum(r["actor_variance_ratio"] for r in cf) / len(cf)
            share = sum(r["action_variance_share"] for r in cf) / len(cf)
            lines.append(f"| {dims} | {horizon} | {steps:,} | {cells[0]} | {cells[1]} | {g:.2f} [{lo:.2f}, {hi:.2f}] "
                         f"| {g70:.2f} [{lo70:.2f}, {hi70:.2f}] | {final['joint']:.3f} / {final['counterfactual']:.3f} "
                         f"| {avr:.2f} | {share:.2f} |")
            rows.append({"dims": dims, "horizon": horizon, "ratio": g, "lo": lo, "hi": hi, "ratio70": g70,
                         "censored": any(not h for m in MODES for _, h in res[m])})
    return "\n".join(lines), rows


def plot(rows: list[dict], path: str, title: str = "Per-dim credit vs action width (target matching)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=90)
    for horizon, colour in zip(HORIZONS, ("tab:blue", "tab:orange"), strict=True):
        pts = [r for r in rows if r["horizon"] == horizon]
        if not pts:
            continue
        x = [r["dims"] for r in pts]
        y = [r["ratio"] for r in pts]
        err = [[r["ratio"] - r["lo"] for r in pts], [r["hi"] - r["ratio"] for r in pts]]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=4, color=colour, label=f"horizon {horizon}: to 90%")
        ax.plot(x, [r["ratio70"] for r in pts], "s--", color=colour, alpha=0.6, label=f"horizon {horizon}: to 70%")
        for r in pts:
            if r["censored"]:
                ax.annotate("censored", (r["dims"], r["ratio"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")  # ratios; an interval from a censored pair can span decades
    ax.set_ylim(0.25, 8)
    ax.set_yticks([0.25, 0.5, 1, 2, 4, 8], ["0.25", "0.5", "1", "2", "4", "8"])
    ax.minorticks_off()
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(DIMS), [str(d) for d in DIMS])
    ax.set_xlabel("action dims D")
    ax.set_ylabel("env steps to 90% / 70%: counterfactual ÷ joint")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    ap.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    ap.add_argument("--budget-scale", type=float, default=2.0, help="budget = scale x 8k x sqrt(D) (x 1.5 if H>1)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--target-kl", type=float, default=0.05)
    ap.add_argument("--ratio", choices=("joint", "token", "token_clip"), default="joint",
                    help="credit.ratio of both modes: the joint ratio, per-dim ratios clipped per dim, or the joint "
                         "weight clipped per dim")
    ap.add_argument("--goals", type=int, default=8, help="contexts (fixed goal sets); 0 = a fresh goal every episode")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", default="benchmarks/results/credit_dsweep")
    ap.add_argument("--out", default="docs/img/credit_dsweep.png")
    ap.add_argument("--report", action="store_true",
                    help="only aggregate every finished run in --results that has these settings (table + figure)")
    args = ap.parse_args()
    if args.report:
        records = [r for r in map(json.loads, (p.read_text() for p in sorted(Path(args.results).glob(
                       f"d*_{tag(args.hidden, args.lr, args.target_kl, args.goals, args.ratio)}.json"))))
                   if r["steps"] == budget(r["dims"], r["horizon"], args.budget_scale)]
        table, rows = summarise(records)
        print(table)
        plot(rows, args.out, "Per-dim credit vs action width" + (f" ({args.ratio} ratio)" if args.ratio != "joint" else ""))
        print(f"\nfigure: {args.out}")
        return
    jobs = [(d, h, m, s, budget(d, h, args.budget_scale), args.hidden, args.lr, args.target_kl, args.goals,
             args.results, args.ratio)
            for s in range(1, args.seeds + 1) for h in args.horizons for d in args.dims for m in MODES]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        records = pool.map(run_one, jobs, chunksize=1)
    print(f"\n{len(jobs)} runs in {(time.perf_counter() - t0) / 60:.1f} min\n")
    table, rows = summarise(records)
    print(table)
    plot(rows, args.out)
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
