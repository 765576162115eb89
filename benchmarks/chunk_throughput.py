"""Env steps per second of PPO on MetaWorld with and without action chunks: the main job against its chunked twin.

    OMP_NUM_THREADS=2 python benchmarks/chunk_throughput.py                 # 3 rounds, ~14 min on 2 cores
    OMP_NUM_THREADS=2 python benchmarks/chunk_throughput.py --rounds 5 --chunks 4 8

Contenders: ``recipes/metaworld/main_job.yaml`` (one action per decision, 4 action tokens decoded autoregressively
with the KV cache) and ``recipes/metaworld/chunked.yaml`` at each ``--chunks`` H (H x 4 tokens from one parallel
forward, the env executing the chunk open loop: inner steps skip rendering), plus H=4 decoded autoregressively
(what chunks cost without parallel decoding). Every contender is the same tiny VLA (raw weights: the speed does not
depend on what it learned), 16 async envs, the same env-step budget per update (1,024), the same PPO update
settings as its recipe. Each round runs every contender once for ``--updates`` updates, in an order that rotates
from round to round (the machine's load drifts; interleaving gives every contender the same share of it); a
contender's number is ``charts/SPS`` (env steps / (rollout + update) seconds) of its updates after the first.
Reported: the median env-steps/s per contender, each round's ratio to the main job, and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["logging.progress_bar=false", "logging.report_to=[none]", "logging.plot_every=0", "logging.checkpoint_every=0",
         "eval.every=0"]


def contenders(chunks: list[int]) -> dict[str, tuple[str, list[str]]]:
    out = {"main job (H=1, autoregressive)": ("recipes/metaworld/main_job.yaml", [])}
    for H in chunks:  # 16 envs x (64 / H) decisions x H steps = 1,024 env steps per update, as the main job
        out[f"chunked H={H}, parallel"] = ("recipes/metaworld/chunked.yaml",
                                           [f"action.chunk_size={H}", f"ppo.num_steps={64 // H}"])
    out["chunked H=4, autoregressive"] = ("recipes/metaworld/chunked.yaml",
                                         ["action.chunk_size=4", "action.decoding=autoregressive", "ppo.num_steps=16"])
    return out


def measure(recipe: str, overrides: list[str], updates: int, out: Path) -> list[float]:
    """``charts/SPS`` of every update after the first of a fresh run."""
    from vla_structppo.config import load_config
    from vla_structppo.pipeline import ensure_model
    from vla_structppo.train.ppo import train

    cfg = load_config(recipe, [f"output_dir={out}", "name=run", "overwrite=true", f"ppo.total_timesteps={1024 * updates}",
                               "ppo.critic_warmup_updates=0", *QUIET, *overrides])
    ensure_model(cfg)
    history = train(cfg).history
    return [r["charts/SPS"] for r in history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=4, help="updates per run (the first is not counted)")
    parser.add_argument("--chunks", nargs="+", type=int, default=[4, 8])
    args = parser.parse_args()
    os.chdir(ROOT)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    runs = contenders(args.chunks)
    names = list(runs)
    sps: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            this_round = {}
            for name in order:
                recipe, overrides = runs[name]
                this_round[name] = statistics.median(measure(recipe, overrides, args.updates, Path(tmp) / str(r)))
                print(f"round {r + 1}: {name}: {this_round[name]:.1f} env-steps/s", flush=True)
            for name in names:
                sps[name].append(this_round[name])
                ratios[name].append(this_round[name] / this_round[names[0]])
    lines = ["| contender | env-steps/s (median of rounds) | x main job, per round | median ratio |", "|---|---|---|---|"]
    for name in names:
        per_round = ", ".join(f"{x:.2f}" for x in ratios[name])
        lines.append(f"| {name} | {statistics.median(sps[name]):.1f} | {per_round} | "
                     f"{statistics.median(ratios[name]):.2f}x |")
    print("\n" + "\n".join(lines))
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "chunk_throughput.json").write_text(
        json.dumps({"sps": sps, "ratios": ratios, "args": vars(args), "python": sys.version}, indent=1) + "\n")


if __name__ == "__main__":
    main()
