"""Is the SFT stage of a recipe bit-reproducible? Run it N times and compare the adapters byte for byte.

    OMP_NUM_THREADS=2 python benchmarks/sft_determinism.py recipes/metaworld/main_job.yaml --runs 10 --load 2

Each run is a fresh ``vla-structppo sft RECIPE`` process (same seed, same demonstrations, same tiny model)
with ``--threads`` intra-op threads; ``--load N`` keeps N busy processes beside it (a shared machine).
``--as-pipeline`` runs what ``vla-structppo pipeline`` does before its SFT stage in the same process
instead: record the demonstrations afresh (async simulator workers) into a new dir, then clone them.
Prints one row per run — the sha256 of ``adapter_model.safetensors`` and the wall time — and how many
distinct adapters came out. The demonstrations and the tiny model the recipe names are made first if
missing (``vla-structppo pipeline`` would make them the same way).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

# the pipeline up to its SFT stage, in one process: fresh demos (async workers), then behaviour cloning
_PIPELINE_HEAD = """
import sys
from vla_structppo.config import load_config
from vla_structppo.data.demos import save_demos
from vla_structppo.data.record import record_demos
from vla_structppo.train.sft import sft
if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    save_demos(record_demos(cfg, progress=False), cfg.sft.dataset, cfg)
    sft(cfg)
"""


def _busy(stop) -> None:
    x = 0.0
    while not stop.is_set():
        for i in range(100_000):
            x += i * 1e-9


def _prepare(recipe: str) -> None:
    from vla_structppo.config import load_config
    from vla_structppo.data.demos import save_demos
    from vla_structppo.data.record import record_demos
    from vla_structppo.pipeline import ensure_model

    cfg = load_config(recipe)
    ensure_model(cfg)
    if not (Path(cfg.sft.dataset) / "dataset_info.json").is_file():
        save_demos(record_demos(cfg), cfg.sft.dataset, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside each SFT run")
    parser.add_argument("--out", default="runs/sft-determinism", help="output_dir of the runs")
    parser.add_argument("--env", action="append", default=[], help="extra VAR=value for the SFT processes")
    parser.add_argument("--as-pipeline", action="store_true",
                        help="record fresh demos in the same process before SFT, as the pipeline does")
    args = parser.parse_args()
    _prepare(args.recipe)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **dict(e.split("=", 1) for e in args.env)}
    stop = mp.Event()
    hogs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for h in hogs:
        h.start()
    rows = []
    try:
        for i in range(args.runs):
            name = f"run{i}"
            t0 = time.perf_counter()
            overrides = [f"output_dir={args.out}", f"name={name}", "logging.progress_bar=false",
                         "logging.tensorboard=false"]
            if args.as_pipeline:
                overrides.append(f"sft.dataset={args.out}/demos-{name}")
                command = [sys.executable, "-c", _PIPELINE_HEAD, args.recipe, *overrides]
            else:
                command = [sys.executable, "-m", "vla_structppo", "sft", args.recipe, *overrides]
            subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            adapter = Path(args.out) / name / "checkpoints" / "last" / "adapter_model.safetensors"
            rows.append((name, hashlib.sha256(adapter.read_bytes()).hexdigest()[:16], time.perf_counter() - t0))
            print(f"| {rows[-1][0]} | {rows[-1][1]} | {rows[-1][2]:.0f} s |", flush=True)
    finally:
        stop.set()
        for h in hogs:
            h.join()
    distinct = sorted({r[1] for r in rows})
    print(f"\n{args.runs} runs, threads={args.threads}, load={args.load}, extra env {args.env or 'none'}: "
          f"{len(distinct)} distinct adapter(s) {distinct}")


if __name__ == "__main__":
    main()
