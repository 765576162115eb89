"""The anchors' RL recipe against PPO with per-dim / pairwise credit, on the chunked tiny-VLA MetaWorld task.

    OMP_NUM_THREADS=2 python benchmarks/vla_credit.py                     # 2 tasks x 5 arms x 3 seeds (~1.5 h on 2 cores)
    OMP_NUM_THREADS=2 python benchmarks/vla_credit.py --seeds 1 2 3 4 5   # more seeds (finished runs are kept)
    python benchmarks/vla_credit.py --report                              # the table from what is there

Every arm starts from the SAME SFT checkpoint of a task (10 scripted-expert demos, chunk targets, one SFT run of
``recipes/metaworld/chunked.yaml``'s settings) and trains for the same env-step budget (``--steps``, env steps, not
decisions), with seeds paired across arms. The arms:

* ``GRPO (anchor)``: ``recipes/metaworld/chunked_grpo.yaml`` -- SimpleVLA-RL's / RLinf's recipe in this toolkit's
  keys: groups of 8 envs started alike, one whole episode each, outcome = 5 x success, no critic, per-token ratio,
  clip 0.2 / 0.28, dual clip 3, token-mean loss, groups with 10-90% success kept;
* ``PPO joint ratio``: the chunked recipe with GAE, joint credit, the design's joint ratio, no structured head;
* ``PPO token ratio``: the same with per-token ratios (what the anchors use);
* ``PPO counterfactual + token ratio``: per-dim credit from the structured head (ALGORITHM.md §5) with per-token
  ratios, the combination docs/benchmarks.md ("The late plateau") recommends;
* ``PPO structured``: the structured head's A_phi(s, a) as every token's advantage (the note's idea 2).

Tasks: ``drawer-open-v3`` (the recipe's) and ``window-open-v3``, which no recipe tunes for. Measured per run:
greedy success on the same 100 fixed evaluation seeds after the budget (Wilson interval per run); per arm the mean
over seeds with a 95% t interval, the paired difference to GRPO with its 95% interval, the env steps until the
training success rate (sampled rollouts, mean of 3 consecutive updates) first reaches GRPO's final training success
(the mean over GRPO's seeds of its last 3 updates), and the wall time of a run. Every finished run is a JSON file
under ``--results`` and is skipped when found, so the benchmark can be stopped and continued.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stats import mean_ci, paired_ci, samples_to  # benchmarks/ is on the path: the scripts run from there

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/metaworld/chunked.yaml"
GRPO_RECIPE = "recipes/metaworld/chunked_grpo.yaml"
ARMS: dict[str, tuple[str, list[str]]] = {  # label -> (recipe, overrides)
    "GRPO (anchor)": (GRPO_RECIPE, []),
    "PPO joint ratio": (RECIPE, ["credit.mode=joint", "head.enabled=false", "credit.ratio=joint"]),
    "PPO token ratio": (RECIPE, ["credit.mode=joint", "head.enabled=false", "credit.ratio=token"]),
    "PPO counterfactual + token ratio": (RECIPE, ["credit.mode=counterfactual", "credit.ratio=token"]),
    "PPO structured": (RECIPE, ["credit.mode=structured"]),
}
BASELINE = "GRPO (anchor)"
TASKS = ("drawer-open-v3", "window-open-v3")
QUIET = ["logging.progress_bar=false", "logging.report_to=[none]", "logging.plot_every=0"]


def _cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    subprocess.run([sys.executable, "-m", "vla_structppo", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def sft_checkpoint(task: str, results: Path) -> Path:
    """The task's shared SFT checkpoint (demos recorded once, one SFT run with the recipe's settings)."""
    run = results / task / "sft"
    if (run / "checkpoints" / "last").exists():
        return run / "checkpoints" / "last"
    common = [f"env.task={task}", f"sft.dataset={results / task / 'demos'}", f"output_dir={results / task}", *QUIET]
    from vla_structppo.config import load_config
    from vla_structppo.pipeline import ensure_model

    os.chdir(ROOT)  # the recipe's model path is relative to the repository
    ensure_model(load_config(RECIPE, common))  # the recipe's tiny VLA, built offline if it is not there yet
    if not (results / task / "demos" / "dataset_info.json").is_file():
        _cli("demos", RECIPE, *common)
    _cli("sft", RECIPE, *common, "name=sft", "overwrite=true")
    return run / "checkpoints" / "last"


def sft_success(task: str, results: Path) -> dict | None:
    """Greedy success of the task's SFT checkpoint (where every arm starts) on the same 100 evaluation seeds."""
    path = results / task / "sft_eval.json"
    run = results / task / "sft"
    if not path.is_file() and (run / "checkpoints" / "last").exists():
        _cli("eval", f"eval.checkpoint={run}", "eval.num_episodes=100", "eval.num_envs=16", "eval.videos=0",
             f"output_dir={results / task}")
        overall = json.loads((run / "eval" / "results.json").read_text())["overall"]
        path.write_text(json.dumps({"success": overall["success_rate"], "ci95": overall["ci95"]}) + "\n")
    return json.loads(path.read_text()) if path.is_file() else None


def run_path(results: Path, task: str, arm: str, seed: int) -> Path:
    """Where a finished run's record is cached."""
    return results / task / "runs" / f"{arm.replace(' ', '_').replace('+', 'and')}_seed{seed}.json"


def run_one(task: str, arm: str, seed: int, steps: int, results: Path) -> dict:
    path = run_path(results, task, arm, seed)
    if path.is_file():
        return json.loads(path.read_text())
    recipe, overrides = ARMS[arm]
    out = results / task / "train"
    name = path.stem
    start = sft_checkpoint(task, results)
    t0 = time.perf_counter()
    _cli("train", recipe, f"env.task={task}", f"init_from={start}", f"seed={seed}", f"ppo.total_timesteps={steps}",
         f"output_dir={out}", f"name={name}", "overwrite=true", "logging.checkpoint_every=0", *QUIET, *overrides)
    train_s = time.perf_counter() - t0
    _cli("eval", f"eval.checkpoint={out / name}", "eval.num_episodes=100", "eval.num_envs=16", "eval.videos=0",
         f"output_dir={out}")
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluation = json.loads((out / name / "eval" / "results.json").read_text())["overall"]
    record = {"task": task, "arm": arm, "seed": seed, "steps": steps, "train_s": train_s,
              "success": evaluation["success_rate"], "ci95": evaluation["ci95"],
              "curve": [(m["charts/global_step"], m.get("rollout/success_rate", 0.0)) for m in metrics]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return record


def report(records: list[dict], steps: int, start: dict[str, dict | None]) -> str:
    lines = []
    for task in sorted({r["task"] for r in records}):
        rows = {arm: sorted((r for r in records if r["task"] == task and r["arm"] == arm), key=lambda r: r["seed"])
                for arm in ARMS}
        base = {r["seed"]: r for r in rows[BASELINE]}
        level = (sum(sum(v for _, v in r["curve"][-3:]) / 3 for r in base.values()) / len(base)) if base else None
        lines += [f"\n### {task} ({steps:,} env steps per run)\n",
                  "| arm | seeds | greedy success (100 seeds), mean ± 95% CI | paired vs GRPO [95% CI] | env steps to "
                  f"GRPO's training level ({level if level is None else f'{level:.2f}'}) | wall min/run |",
                  "|---|---|---|---|---|---|"]
        if start.get(task):
            low, high = start[task]["ci95"]
            lines.append(f"| SFT checkpoint (every arm's start) | — | {start[task]['success']:.2f} "
                         f"(Wilson [{low:.2f}, {high:.2f}]) | | | |")
        for arm, runs in rows.items():
            if not runs:
                continue
            m, half = mean_ci([r["success"] for r in runs])
            paired = [r["success"] - base[r["seed"]]["success"] for r in runs if r["seed"] in base]
            diff = "—" if arm == BASELINE or len(paired) < 2 else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*paired_ci(paired))
            reach = [samples_to(r["curve"], level, steps) for r in runs] if level is not None else []
            reached = sum(ok for _, ok in reach)
            to = (f"{sum(s for s, _ in reach) / len(reach):,.0f} ({reached}/{len(reach)} reach)" if reach else "—")
            wall = sum(r["train_s"] for r in runs) / len(runs) / 60
            lines.append(f"| {arm} | {len(runs)} | {m:.3f} ± {half:.3f} | {diff} | {to} | {wall:.1f} |")
        lines.append("\nper seed: " + "; ".join(f"{arm}: " + ", ".join(f"{r['success']:.2f}" for r in runs)
                                               for arm, runs in rows.items() if runs))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=49_152, help="env steps per run (the chunked recipe's budget)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "vla_credit"))
    parser.add_argument("--report", action="store_true", help="only the table of the runs found")
    args = parser.parse_args()
    results = Path(args.results)
    records = []
    for task in args.tasks:
        for seed in args.seeds:  # seed-major: an interrupted benchmark has every arm at the same seeds
            for arm in args.arms:
                path = run_path(results, task, arm, seed)
                if args.report:
                    if path.is_file():
                        records.append(json.loads(path.read_text()))
                    continue
                record = run_one(task, arm, seed, args.steps, results)
                print(f"{task} | {arm} | seed {seed}: success {record['success']:.2f} "
                      f"({record['train_s'] / 60:.1f} min)", flush=True)
                records.append(record)
    start = {task: sft_success(task, results) for task in args.tasks}
    print(report(records, args.steps, start))


if __name__ == "__main__":
    main()
