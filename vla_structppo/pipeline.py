"""The whole workflow in one command: demos -> SFT -> eval -> PPO (structured advantage) -> eval.

``vla-structppo pipeline RECIPE`` runs each stage with the one recipe, in sub-directories of the run
dir (``sft/``, ``ppo/``), skipping what already exists (the demonstrations, the tiny model), and ends
with a table of success before and after PPO (same seeds, 95% Wilson intervals), the learning curve
with both evaluations on it, and the PPO run's credit plots. Every stage is also its own verb.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .checkpoints import layout, resolve
from .checkpoints.rundir import RunLock, claim_run_dir, run_in_dir
from .config import TrainConfig, to_yaml

__all__ = ["run_pipeline"]


def _stage(cfg: TrainConfig, name: str, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` whose run dir is ``<run_dir>/<name>`` (new: the pipeline's dir was just claimed)."""
    return dataclasses.replace(cfg, output_dir=str(cfg.run_dir), name=name, overwrite=False, **changes)


def ensure_model(cfg: TrainConfig) -> None:
    """Build the tiny offline model the recipe names, if it is not there yet (``model.tiny_arch``)."""
    path = Path(cfg.model.name_or_path or "")
    if cfg.model.tiny_arch and not (path / "config.json").is_file():
        from .envs import make_env
        from .testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

        envs = make_env(cfg.env, 1, seed=0)
        low, high = envs.action_bounds
        envs.close()
        save_tiny_vla(cfg.model.tiny_arch, path, seed=cfg.seed, image_size=cfg.env.image_size)
        write_action_tokenizer(path, cfg.env.action_dims, cfg.env.num_bins, low=low, high=high)
        print(f"[pipeline] built a tiny {cfg.model.tiny_arch} VLA at {path}")


def _log(msg: str, t0: float) -> None:
    print(f"[pipeline {time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def run_pipeline(cfg: TrainConfig) -> dict[str, Any]:
    """Demos -> SFT -> PPO -> eval before / after, in ``cfg.run_dir`` (claimed like any run dir: a name in use
    is refused unless ``overwrite=true``; the stages are its ``sft/`` and ``ppo/``)."""
    lock = claim_run_dir(cfg)
    started = False
    try:
        results = _pipeline(cfg, lock)
        started = True
        return results
    finally:
        lock.release(keep_empty=started)


def _pipeline(cfg: TrainConfig, lock: RunLock) -> dict[str, Any]:
    from .data.demos import DemoDatasetError, load_demos, recording_mismatches, save_demos
    from .data.record import record_demos
    from .eval import run_eval
    from .train.ppo import train
    from .train.sft import sft

    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    ensure_model(cfg)
    run_in_dir(cfg, lock)  # it starts: an old run of this name goes now (overwrite=true), not earlier
    (run_dir / layout.CONFIG).write_text(to_yaml(cfg))

    # 1. demonstrations (kept across runs: they depend only on the env and demo seeds)
    dataset = Path(cfg.sft.dataset)
    if not (dataset / "dataset_info.json").is_file():
        _log(f"recording {cfg.demos.num_episodes} expert episodes per task -> {dataset}", t0)
        save_demos(record_demos(cfg), dataset, cfg)
    elif changed := recording_mismatches(dataset, cfg):
        raise DemoDatasetError(f"the demonstrations at {dataset} were recorded with other settings than this "
                               f"recipe's ({'; '.join(changed)}); delete that dir to record them again, or "
                               "point sft.dataset at another one")
    ds, _ = load_demos(dataset)
    _log(f"demos: {len(ds)} steps", t0)

    # 2. behaviour cloning
    sft_cfg = _stage(cfg, "sft")
    sft_result = sft(sft_cfg)
    _log(f"SFT: token accuracy {sft_result.final.get('sft/final_token_accuracy', float('nan')):.3f} -> "
         f"{sft_result.checkpoint}", t0)

    # 3. PPO from the cloned policy
    ppo_cfg = _stage(cfg, "ppo", init_from=str(sft_result.checkpoint))
    ppo_result = train(ppo_cfg)
    ppo_ckpt = resolve(ppo_cfg.run_dir)
    _log(f"PPO: {ppo_result.final.get('charts/global_step', 0):.0f} env steps -> {ppo_ckpt}", t0)

    # 4. both policies on the same seeds: the PPO checkpoint, compared against the SFT one
    eval_cfg = dataclasses.replace(cfg, output_dir=str(cfg.run_dir), name="ppo",
                                   eval=dataclasses.replace(cfg.eval, checkpoint=str(ppo_ckpt),
                                                            compare=str(sft_result.checkpoint)))
    res = run_eval(eval_cfg, env_settings=dataclasses.asdict(cfg.env))
    after = {"tasks": res["tasks"], "overall": res["overall"]}
    before = next(iter(res["compare"].values()))
    results = {"sft": before, "ppo": after, "wall_s": time.perf_counter() - t0,
               "env_steps_ppo": ppo_result.final.get("charts/global_step"), "eval": res.get("results_dir")}
    (run_dir / "pipeline.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    _plot(ppo_result.history, before, after, run_dir, cfg)
    _print_table(before, after, results["wall_s"])
    return results


def _plot(history: list[dict], before: dict, after: dict, run_dir: Path, cfg: TrainConfig) -> None:
    from .diagnostics import plot_learning_curve

    last = history[-1]["charts/global_step"] if history else 0.0
    evals = [(0.0, *_rate(before), "eval after SFT"), (last, *_rate(after), "eval after PPO")]
    plot_learning_curve(history, run_dir / layout.PLOTS / "learning_curve.png", evals=evals,
                        title=f"{cfg.name}: {cfg.env.id} {cfg.env.task} ({cfg.credit.mode})")


def _rate(res: dict) -> tuple[float, float, float]:
    o = res["overall"]
    return o["success_rate"], o["ci95"][0], o["ci95"][1]


def _print_table(before: dict, after: dict, wall: float) -> None:
    print("\n| policy | success | 95% CI | episodes | mean length |")
    print("|---|---|---|---|---|")
    for label, res in (("after SFT", before), ("after PPO", after)):
        o = res["overall"]
        print(f"| {label} | {o['success_rate']:.3f} | [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] | {o['episodes']} | "
              f"{o['mean_length']:.1f} |")
    print(f"\nwall time {wall / 60:.1f} min")
