"""Short fixed-seed runs whose numbers must not change when the code is restructured.

Recorded once on the code before a restructuring (``python tests/behaviour_runs.py --out FILE``) and
compared afterwards by ``tests/test_behaviour_preserved.py``: every logged metric (timings excluded; metrics
added later are not compared),
every evaluation row and a fingerprint of every saved weight tensor of

* an MLP PPO run (counterfactual credit, plots and checkpoints on) and an autoregressive-MLP run on the
  sequential task (GAE through truncation),
* demos -> SFT of a tiny VLA -> PPO from it, and PPO of the raw tiny VLA,
* evaluation of an MLP checkpoint and of a VLA checkpoint (with a video),
* MetaWorld: a state-MLP PPO update, expert demos and an evaluation beside the expert (the bin grid of
  the simulator adapters).

Everything goes through the CLI with recipe files and override keys that every layout of the config
keeps, so the same script runs before and after. Floats are compared with a tolerance measured by
benchmarks/behaviour_spread.py (another CPU runs other kernels and rounds differently; see ``RTOL`` / ``ATOL``);
``--exact`` (or ``BEHAVIOUR_EXACT=1`` in the test) demands bit-identical floats and weight hashes: true on the
machine that recorded the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

TIMING = ("time/", "charts/SPS", "sft/learning_rate_")
LOG = ["logging.progress_bar=false", "logging.tensorboard=false"]


def _cli(*argv: str) -> None:
    from vla_structppo.cli import main

    main(list(argv))


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _weights(ckpt: Path) -> dict[str, Any]:
    """Per safetensors file: the sha256 of every tensor's bytes (exact) and sum / abs-sum (tolerant)."""
    from safetensors.numpy import load_file

    out: dict[str, Any] = {}
    for f in sorted(ckpt.resolve().glob("*.safetensors")):
        tensors = load_file(str(f))
        h = hashlib.sha256()
        sums = {}
        for k in sorted(tensors):
            t = tensors[k]
            h.update(k.encode())
            h.update(t.tobytes())
            sums[k] = [float(t.astype("float64").sum()), float(abs(t.astype("float64")).sum())]
        out[f.name] = {"sha256": h.hexdigest(), "sums": sums}
    return out


def _eval_rows(results_file: Path) -> dict[str, Any]:
    r = json.loads(results_file.read_text())
    keep = ("success_rate", "ci95", "episodes", "successes", "mean_length", "mean_return")
    out = {"overall": {k: r["overall"][k] for k in keep},
           "tasks": {t: {k: row[k] for k in keep} for t, row in r["tasks"].items()}}
    for label, other in (r.get("compare") or {}).items():
        out[f"compare:{Path(label).name}"] = {k: other["overall"][k] for k in keep}
    return out


def record(root: Path) -> dict[str, Any]:
    """Run everything under ``root``; return the numbers."""
    from vla_structppo.testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    common = [f"output_dir={root}", *LOG]

    # 1. MLP PPO, counterfactual credit; 4 updates with plots and checkpoints
    _cli("train", "recipes/structured/quickstart.yaml", *common, "name=mlp", "ppo.total_timesteps=1024",
         "logging.plot_every=2", "logging.checkpoint_every=2")
    out["mlp"] = {"metrics": _metrics(root / "mlp"), "weights": _weights(root / "mlp/checkpoints/last")}

    # 2. autoregressive MLP on the sequential task (truncation, GAE over 8 steps: the horizon as a time limit
    # keeps the bootstrap-from-final-obs path pinned)
    _cli("train", "recipes/structured/sequential_ar.yaml", *common, "name=ar", "ppo.total_timesteps=1024",
         "env.structured.horizon_end=truncate")
    out["ar"] = {"metrics": _metrics(root / "ar"), "weights": _weights(root / "ar/checkpoints/last")}

    # 3. a tiny VLA: raw PPO, demos -> SFT -> PPO from the cloned adapter
    model = root / "tiny-llava"
    save_tiny_vla("llava", model, seed=0)
    write_action_tokenizer(model, 7, 256)
    _cli("train", "recipes/structured/vla_ppo.yaml", *common, "name=vla-ppo", f"model.name_or_path={model}",
         "ppo.total_timesteps=128")
    out["vla_ppo"] = {"metrics": _metrics(root / "vla-ppo"), "weights": _weights(root / "vla-ppo/checkpoints/last")}
    demos = root / "demos"
    sft_args = ["recipes/structured/vla_sft.yaml", *common, f"model.name_or_path={model}", f"sft.dataset={demos}",
                "sft.max_samples=64", "sft.num_epochs=2"]
    _cli("demos", *sft_args)
    _cli("sft", *sft_args, "name=vla-sft")
    out["vla_sft"] = {"metrics": _metrics(root / "vla-sft"), "weights": _weights(root / "vla-sft/checkpoints/last")}
    _cli("train", *sft_args, "name=vla-sft-ppo", f"init_from={root / 'vla-sft/checkpoints/last'}",
         "ppo.total_timesteps=128")
    out["vla_sft_ppo"] = {"metrics": _metrics(root / "vla-sft-ppo"),
                          "weights": _weights(root / "vla-sft-ppo/checkpoints/last")}

    # 4. evaluation of an MLP and of a VLA checkpoint (fixed seeds; the VLA one films an episode)
    _cli("eval", *common, f"eval.checkpoint={root / 'mlp'}", "eval.num_episodes=8", "eval.num_envs=4")
    out["eval_mlp"] = _eval_rows(root / "mlp/eval/results.json")
    _cli("eval", *common, f"eval.checkpoint={root / 'vla-sft-ppo'}", "eval.num_episodes=4", "eval.num_envs=2",
         "eval.videos=1", f"eval.compare={root / 'vla-sft/checkpoints/last'}")
    out["eval_vla"] = _eval_rows(root / "vla-sft-ppo/eval/results.json")

    # 5. MetaWorld (state observations: no rendering needed for the policy): one PPO update, expert demos,
    #    evaluation beside the expert
    import importlib.util

    if importlib.util.find_spec("metaworld") is None:  # find_spec: importing it would pick a GL backend
        return out
    mw = ["env.id=metaworld", "env.task=reach-v3", "env.action_dims=4", "env.num_bins=11",
          "env.max_episode_steps=8"]
    _cli("train", *common, *mw, "name=mw", "env.num_envs=2", "ppo.num_steps=8", "ppo.total_timesteps=16",
         "ppo.num_minibatches=2", "logging.plot_every=0")
    out["mw_ppo"] = {"metrics": _metrics(root / "mw"), "weights": _weights(root / "mw/checkpoints/last")}
    _cli("eval", *common, f"eval.checkpoint={root / 'mw'}", "eval.num_episodes=2", "eval.num_envs=2",
         "eval.expert=true", "eval.videos=0")
    out["mw_eval"] = _eval_rows(root / "mw/eval/results.json")
    mw_demos = root / "mw-demos"
    _cli("demos", *common, *mw, "env.image_size=32", "env.num_envs=2",
         "demos.num_episodes=2", "env.max_episode_steps=60", f"sft.dataset={mw_demos}")
    from datasets import load_from_disk

    ds = load_from_disk(str(mw_demos))
    actions = [list(map(float, a)) for a in ds["action"]]
    out["mw_demos"] = {"rows": len(ds), "actions_sum": sum(map(sum, actions)),
                       "actions_sha256": hashlib.sha256(json.dumps(actions).encode()).hexdigest(),
                       "episodes": sorted(set(ds["episode_index"]))}
    return out


# -- comparison -----------------------------------------------------------------------------------
# The tolerance of a comparison on another machine, from benchmarks/behaviour_spread.py (docs/benchmarks.md,
# "The behaviour baseline across float paths"): under other ATen / MKL / oneDNN / OpenBLAS kernels these runs
# move by at most 9.3e-5 (0.19 of this tolerance), while a 1e-4 shift of every normalised advantage moves them
# by 2.4x it, a 0.5% larger PPO clip by ~900x and a 0.1% heavier value loss by ~1100x.
RTOL, ATOL = 1e-4, 5e-4


def differences(old: Any, new: Any, *, exact: bool, path: str = "", rtol: float = RTOL,
                atol: float = ATOL) -> list[str]:
    """Where ``new`` differs from ``old``: floats within ``math.isclose(rel_tol=rtol, abs_tol=atol)``, bit-equal
    and hashes compared too when ``exact``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k not in old:  # a metric added since the recording changes none of the recorded numbers
                continue
            if k not in new:
                out.append(f"{path}/{k}: only in old")
            elif k.endswith("sha256") and not exact:
                continue
            else:
                out += differences(old[k], new[k], exact=exact, path=f"{path}/{k}", rtol=rtol, atol=atol)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: length {len(old)} -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in differences(a, b, exact=exact, path=f"{path}[{i}]", rtol=rtol, atol=atol)]
    if isinstance(old, float) or isinstance(new, float):
        a, b = float(old), float(new)
        if math.isnan(a) and math.isnan(b):
            return []
        same = a == b if exact else math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
        return [] if same else [f"{path}: {a!r} -> {b!r}"]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the numbers to this JSON file")
    parser.add_argument("--compare", help="compare with this recorded JSON file")
    parser.add_argument("--exact", action="store_true", help="floats bit-identical, weight hashes equal")
    parser.add_argument("--workdir", default="runs/behaviour",
                        help="where the runs go (the script's scratch dir: emptied first)")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)  # run dirs are never reused, so a second call needs a clean one
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    numbers = record(Path(args.workdir))
    if args.out:
        Path(args.out).write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    if args.compare:
        diffs = differences(json.loads(Path(args.compare).read_text()), json.loads(json.dumps(numbers)),
                            exact=args.exact)
        print("\n".join(diffs[:50]) or "identical")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
