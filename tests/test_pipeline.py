"""The ``pipeline`` verb end to end on the image-mode structured task with a tiny VLA it builds itself:
demos -> SFT -> PPO -> both checkpoints evaluated on the same seeds; and it refuses demonstrations that
were recorded with other settings than the recipe's."""

from __future__ import annotations

import json

import pytest

from vla_structppo.config import load_config
from vla_structppo.data.demos import DemoDatasetError, recording_mismatches, save_demos
from vla_structppo.data.record import record_demos
from vla_structppo.pipeline import run_pipeline


def _cfg(tmp_path, *extra: str):
    return load_config(None, [
        f"output_dir={tmp_path / 'runs'}", "name=pipe", "policy.type=vla", "model.tiny_arch=llava",
        f"model.name_or_path={tmp_path / 'tiny'}", "env.observation=image", "env.image_size=32",
        "env.action_dims=3", "env.num_bins=256", "env.structured.num_goals=4", "env.num_envs=8",
        f"sft.dataset={tmp_path / 'demos'}", "sft.max_samples=32", "sft.num_epochs=2", "sft.bounds=model",
        "ppo.num_steps=2", "ppo.total_timesteps=32", "ppo.num_minibatches=2", "eval.num_episodes=6",
        "eval.num_envs=3", "eval.videos=0", "logging.progress_bar=false", "logging.tensorboard=false", *extra,
    ])


def test_pipeline_runs_every_stage_and_compares_on_the_same_seeds(tmp_path):
    cfg = _cfg(tmp_path)
    results = run_pipeline(cfg)
    run = cfg.run_dir
    saved = json.loads((run / "pipeline.json").read_text())
    assert saved["env_steps_ppo"] == 32
    for stage in ("sft", "ppo"):
        overall = saved[stage]["overall"]
        assert overall["episodes"] == 6 and 0.0 <= overall["ci95"][0] <= overall["success_rate"] <= overall["ci95"][1]
    assert results["sft"]["overall"] == saved["sft"]["overall"]
    assert (run / "sft" / "checkpoints" / "last").is_dir() and (run / "ppo" / "checkpoints" / "last").is_dir()
    assert (run / "plots" / "learning_curve.png").stat().st_size > 0
    assert (tmp_path / "tiny" / "config.json").is_file()  # the tiny model it built
    assert recording_mismatches(tmp_path / "demos", cfg) == []  # the demos remember how they were recorded


def test_pipeline_refuses_demos_recorded_with_other_settings(tmp_path):
    cfg = _cfg(tmp_path)
    save_demos(record_demos(cfg), cfg.sft.dataset, cfg)
    other = _cfg(tmp_path, "env.structured.num_goals=5")
    assert recording_mismatches(cfg.sft.dataset, other) == ["env.structured.num_goals: 4 -> 5"]
    with pytest.raises(DemoDatasetError, match=r"env.structured.num_goals: 4 -> 5.*delete that dir"):
        run_pipeline(other)
    assert not other.run_dir.joinpath("sft").exists()  # refused before any training


def test_pipeline_refuses_a_name_in_use(tmp_path):
    from vla_structppo.checkpoints.rundir import RunDirError

    cfg = _cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text("an earlier run\n")
    with pytest.raises(RunDirError, match="already holds a run"):
        run_pipeline(cfg)
    assert (cfg.run_dir / "config.yaml").read_text() == "an earlier run\n"
