"""Why the head-based credit modes end lower than joint PPO on the structured bandits, and what fixes it.

Joint PPO ends at ~0.99 of optimal on recipes/structured/{counterfactual,unstructured}.yaml; counterfactual
credit at ~0.96 (docs/benchmarks.md, "Credit modes"). This runs the variants over seeds and reports, for the
last quarter of each run, what the diagnostics say: the head's explained variance, the actor's per-dim
advantage variance relative to joint's (``credit/actor_variance_ratio``: above 1 the baseline ADDS noise),
and the variance shares of ``diagnostics.variance_shares``.

    OMP_NUM_THREADS=1 python benchmarks/credit_plateau.py --seeds 5 --workers 2
    OMP_NUM_THREADS=1 python benchmarks/credit_plateau.py --trace 1 --variants joint counterfactual
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import tempfile
import time

from stats import mean_ci, samples_to  # benchmarks/ is on the path: the scripts run from there

VARIANTS = {
    "joint": ["credit.mode=joint", "head.enabled=false"],
    "counterfactual": ["credit.mode=counterfactual"],
    "counterfactual, fitted scale": ["credit.mode=counterfactual", "credit.baseline_scale=fitted"],
    # credit from the head after it has fitted the batch it scores (the default until head.credit_from=previous)
    "counterfactual, in-sample head": ["credit.mode=counterfactual", "head.credit_from=fitted"],
    # is it the credit, or does merely carrying the head change joint PPO?
    "joint, head on": ["credit.mode=joint"],
    # the head trained only in its own fit epochs, not in the PPO minibatches (whose loss and norm it shares)
    "counterfactual, head out of PPO loss": ["credit.mode=counterfactual", "ppo.adv_coef=0"],
    # Adam divides by the gradient's RMS: less noise = bigger steps at the same lr (premature collapse?)
    "joint, lr 1e-3": ["credit.mode=joint", "head.enabled=false", "ppo.learning_rate=1e-3"],
    "counterfactual, lr 1e-3": ["credit.mode=counterfactual", "ppo.learning_rate=1e-3"],
    "counterfactual, lr 5e-4": ["credit.mode=counterfactual", "ppo.learning_rate=5e-4"],
    "joint, lr 5e-4": ["credit.mode=joint", "head.enabled=false", "ppo.learning_rate=5e-4"],
    # clipping decided per dim (the per-token ratio) instead of by the joint ratio every dim shares
    "joint, token ratio": ["credit.mode=joint", "head.enabled=false", "credit.ratio=token"],
    "counterfactual, token ratio": ["credit.mode=counterfactual", "credit.ratio=token"],
    # only the clip decision per dim; the importance weight stays the joint ratio (HAPPO's per-agent form)
    "joint, token clip": ["credit.mode=joint", "head.enabled=false", "credit.ratio=token_clip"],
    "counterfactual, token clip": ["credit.mode=counterfactual", "credit.ratio=token_clip"],
    # the step fixed in policy space: the learning rate steered to a KL per update
    "joint, adaptive lr": ["credit.mode=joint", "head.enabled=false", "ppo.lr_schedule=adaptive", "ppo.desired_kl=0.02"],
    "counterfactual, adaptive lr": ["credit.mode=counterfactual", "ppo.lr_schedule=adaptive", "ppo.desired_kl=0.02"],
}
TASKS = {"structured": "recipes/structured/counterfactual.yaml", "unstructured": "recipes/structured/unstructured.yaml"}
LATE = ("credit/explained_variance_head", "credit/actor_variance_ratio", "credit/action_variance_share",
        "credit/residual_variance_share", "losses/entropy", "losses/grad_norm")


def run_one(job: tuple[str, str, int, int]) -> dict:
    task, variant, seed, budget = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from vla_structppo.config import load_config
    from vla_structppo.train.ppo import train

    out = tempfile.mkdtemp(prefix="plateau-")
    cfg = load_config(TASKS[task], [*VARIANTS[variant], f"seed={seed}", f"ppo.total_timesteps={budget}",
                                    f"output_dir={out}", "name=run", "logging.progress_bar=false",
                                    "logging.tensorboard=false", "logging.plot_every=0", "logging.checkpoint_every=0"])
    from vla_structppo.eval import evaluate_policy

    t0 = time.perf_counter()
    result = train(cfg)
    history = result.history
    # the same final policy acting greedily: is the lower sampled return a worse policy, or exploration left in it?
    # (its mean return: on the structured task the success flag stayed 0 for every variant, separating nothing)
    greedy = evaluate_policy(result.agent, cfg.env, num_episodes=64, seed=10_000, num_envs=8, deterministic=True)
    n = len(history)
    late = history[3 * n // 4:]
    # sample efficiency: env steps until the mean of 3 consecutive updates reaches 0.9 (the budget if never)
    to90, _ = samples_to([(r["charts/global_step"], r["rollout/normalized_return"]) for r in history], 0.9, budget)
    row = {"task": task, "variant": variant, "seed": seed, "wall": time.perf_counter() - t0, "to90": to90,
           "final": sum(r["rollout/normalized_return"] for r in history[-5:]) / 5,
           "greedy_return": greedy["overall"]["mean_return"]}
    for key in LATE:
        xs = [r[key] for r in late if key in r and not math.isnan(r[key])]
        row[key] = sum(xs) / len(xs) if xs else float("nan")
    return row


def trace(variant: str, seed: int, budget: int, every: int = 4) -> list[dict]:
    """One unstructured-task run of ``variant`` with a checkpoint every ``every`` updates; per checkpoint, on the
    task's goal contexts: the mean probability of each dim's optimal bin, how many (context, dim) pairs have
    let it fall under 5% (locked on another bin), the mean per-dim entropy; and that update's KL, clip fraction
    and actor variance ratio."""
    import json

    import numpy as np
    import torch

    from vla_structppo.checkpoints import load_agent
    from vla_structppo.config import load_config
    from vla_structppo.envs.registry import make_env
    from vla_structppo.envs.structured import optimal_bins
    from vla_structppo.train.ppo import train

    out = tempfile.mkdtemp(prefix="plateau-trace-")
    cfg = load_config(TASKS["unstructured"], [*VARIANTS[variant], f"seed={seed}", f"ppo.total_timesteps={budget}",
                                              f"output_dir={out}", "name=run", "logging.progress_bar=false",
                                              "logging.tensorboard=false", "logging.plot_every=0",
                                              f"logging.checkpoint_every={every}", "logging.keep_checkpoints=0"])
    run = train(cfg).run_dir
    metrics = {int(r["charts/update"]): r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    env = make_env(cfg.env, 8, 0)
    goals = env._goal_set  # the task's fixed contexts (num_goals of them)
    # the env's observation layout: [errors, steps_left / horizon], a full horizon at the start of an episode
    obs = torch.tensor(np.concatenate([goals, np.ones((len(goals), 1))], 1), dtype=torch.float32)
    best = optimal_bins(env.spec, goals, np.ones(len(goals), dtype=np.int64))  # [G, D]
    rows = []
    for ck in sorted(p for p in (run / "checkpoints").iterdir() if p.name.isdigit()):
        agent, _ = load_agent(ck)
        with torch.no_grad():
            probs = agent.policy.evaluate(obs, torch.as_tensor(best)).bin_probs.numpy()  # [G, D, K]
        p_best = np.take_along_axis(probs, best[..., None], -1)[..., 0]
        m = metrics[int(ck.name)]
        rows.append({"update": int(ck.name), "p_best": float(p_best.mean()), "locked": int((p_best < 0.05).sum()),
                     "pairs": p_best.size, "entropy": float(-(probs * np.log(probs + 1e-12)).sum(-1).mean()),
                     "kl": m["losses/approx_kl"], "clipfrac": m["losses/clipfrac"],
                     "avr": m.get("credit/actor_variance_ratio", 1.0)})
    return rows


def print_trace(variants: list[str], seed: int, budget: int) -> None:
    print(f"unstructured task, seed {seed}, {budget} env steps; a checkpoint every 4 updates: each of the first 10, "
          "then every third\n")
    print("| credit | " + " | ".join(["update", "P(best bin)", "pairs locked (P < 0.05)", "entropy / dim", "KL of the update",
                                     "clip fraction", "actor variance ratio"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in variants:
        rows = trace(variant, seed, budget)
        for r in rows[:10] + rows[10::3]:
            print(f"| {variant} | {r['update']} | {r['p_best']:.2f} | {r['locked']} / {r['pairs']} | {r['entropy']:.2f} | "
                  f"{r['kl']:.3f} | {r['clipfrac']:.2f} | {r['avr']:.2f} |")


def pm(xs: list[float], digits: int = 3) -> str:
    """``mean ± 95% CI`` over the runs that have a value (NaN: the metric does not exist for the variant)."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "—"
    m, half = mean_ci(xs)
    return f"{m:.{digits}f}" if len(xs) < 2 else f"{m:.{digits}f} ± {half:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--trace", type=int, metavar="SEED",
                    help="instead: trace when the final policy's wrong bins get locked in (unstructured task, one seed)")
    args = ap.parse_args()
    if args.trace is not None:
        print_trace(args.variants, args.trace, args.budget)
        return
    jobs = [(t, v, s, args.budget) for s in range(1, args.seeds + 1) for t in TASKS for v in args.variants]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(run_one, jobs, chunksize=1)
    print(f"{len(jobs)} runs, {args.budget} env steps each, {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("| task | credit | env steps to 90% | final normalised return (sampled) | greedy mean return | head EV (late) | actor variance "
          "ratio (late) | action share (late) | residual share (late) | entropy (late) | grad norm before clipping (late) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for task in TASKS:
        for variant in args.variants:
            rs = [r for r in rows if r["task"] == task and r["variant"] == variant]
            print(f"| {task} | {variant} | {pm([r['to90'] for r in rs], 0)} | {pm([r['final'] for r in rs])} | {pm([r['greedy_return'] for r in rs])} | "
                  + " | ".join(pm([r[k] for r in rs]) for k in LATE) + " |")


if __name__ == "__main__":
    main()
