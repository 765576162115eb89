"""Simulator env throughput: env-steps/s of the MetaWorld vector env with image observations.

    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py                       # reach-v3, 64 + 128 px
    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py --task drawer-open-v3 --sizes 64 --envs 1 4
    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py --mesh-lod 0 0.04   # full vs simplified meshes

For each image size x number of envs x mesh simplification (``env.mesh_lod``) x vector mode (sync: one process; async: one worker process per
env, forkserver) the env is built through ``make_env`` (the trainer's path), reset, stepped ``--warmup``
untimed times, then for ``--seconds`` with uniformly random bin actions (no policy in the loop, so this
is the simulator + rendering ceiling). Episodes end by the time limit (``env.max_episode_steps``), so
resets are included at their real frequency. Writes ``benchmarks/results/env_throughput.json`` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from vla_structppo.config import EnvConfig, MetaWorldEnvConfig
from vla_structppo.envs import make_env


def measure(cfg: EnvConfig, num_envs: int, seconds: float, warmup: int) -> dict:
    t0 = time.perf_counter()
    env = make_env(cfg, num_envs, seed=0)
    env.reset(seed=0)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    try:
        for _ in range(warmup):
            env.step(rng.integers(0, cfg.num_bins, (num_envs, cfg.action_dims)))
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(rng.integers(0, cfg.num_bins, (num_envs, cfg.action_dims)))
            steps += 1
        wall = time.perf_counter() - start
    finally:
        env.close()
    return {"image_size": cfg.image_size, "num_envs": num_envs, "mode": cfg.vector_mode, "mesh_lod": cfg.mesh_lod,
            "env_steps_per_s": steps * num_envs / wall, "build_s": build_s}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--camera", default="corner2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    ap.add_argument("--mesh-lod", type=float, nargs="+", default=[0.0], help="env.mesh_lod values to compare")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed stepping per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "env_throughput.json")
    args = ap.parse_args(argv)
    rows = []
    grid = [(size, n, lod) for size in args.sizes for n in args.envs for lod in args.mesh_lod]
    for size, n, lod in grid:
        for mode in args.modes:
            cfg = EnvConfig(id="metaworld", task=args.task, image_size=size, action_dims=4, num_bins=256,
                            observation="image", vector_mode=mode, max_episode_steps=150,
                            metaworld=MetaWorldEnvConfig(camera=args.camera, mesh_lod=lod))
            rows.append(measure(cfg, n, args.seconds, args.warmup))
            print(f"{size}px {n} envs lod {lod} {mode}: {rows[-1]['env_steps_per_s']:.0f} env-steps/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": args.task, "camera": args.camera, "cpus": os.cpu_count(), "machine": platform.processor(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "mujoco_gl": os.environ.get("MUJOCO_GL")}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"\n{args.task}, camera {args.camera}, random bin actions, {os.cpu_count()} CPUs (env-steps/s)\n")
    print("| image | envs | mesh_lod | sync | async |")
    print("|---|---|---|---|---|")
    for size, n, lod in grid:
        cells = []
        for mode in ("sync", "async"):
            hit = [r for r in rows if (r["image_size"], r["num_envs"], r["mesh_lod"], r["mode"]) == (size, n, lod, mode)]
            cells.append(f"{hit[0]['env_steps_per_s']:.0f}" if hit else "-")
        print(f"| {size} px | {n} | {lod:g} | {cells[0]} | {cells[1]} |")
    return rows


if __name__ == "__main__":
    main()
