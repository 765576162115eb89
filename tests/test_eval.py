"""Evaluation: Wilson intervals, reproducible results on fixed seeds, the files it writes (results.json /
results.md / MP4), compare and expert modes, clear errors, and an evaluation during training that leaves
the training run bit-identical."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUIET

from vla_structppo import checkpoints as ckpt
from vla_structppo import eval as ev
from vla_structppo.checkpoints import load_agent
from vla_structppo.config import load_config
from vla_structppo.train import ppo
from vla_structppo.train.ppo import TIMING_PREFIXES, train

D, K = 7, 256
RUN = [*QUIET, "env.num_envs=8", "ppo.num_steps=4", "env.structured.horizon=2", "env.action_dims=3", "env.num_bins=5",
       "ppo.num_minibatches=2"]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    """A 2-update MLP run on the structured task with both checkpoints kept."""
    out = tmp_path_factory.mktemp("mlp")
    cfg = load_config(None, RUN + [f"output_dir={out}", "name=mlp", "ppo.total_timesteps=64",
                                   "logging.checkpoint_every=1", "logging.keep_checkpoints=5"])
    train(cfg)
    return cfg.run_dir


@pytest.fixture(scope="module")
def vla_checkpoint(tmp_path_factory, tiny_llava) -> Path:
    """An SFT-style checkpoint of a tiny LLaVA (adapter + processor + action tokenizer + config.yaml)
    inside a run dir, for image observations."""
    from helpers import vla_policy

    root = tmp_path_factory.mktemp("vla")
    cfg = load_config(None, ["policy.type=vla", f"model.name_or_path={tiny_llava}", "env.observation=image",
                             f"env.action_dims={D}", f"env.num_bins={K}", "env.structured.horizon=2", "env.image_size=16",
                             f"output_dir={root}", "name=sft"])
    torch.manual_seed(0)
    policy = vla_policy(cfg)
    with torch.no_grad():  # move the adapter off its zero init so the checkpoint differs from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    where = cfg.run_dir / "checkpoints" / "000001"
    where.mkdir(parents=True)
    ckpt.save_agent(policy, where, cfg)
    (cfg.run_dir / "config.yaml").write_text((where / "config.yaml").read_text())
    return where


def eval_cfg(tmp: Path, checkpoint: Path | str, *extra: str):
    return load_config(None, [f"output_dir={tmp}", "name=elsewhere", f"eval.checkpoint={checkpoint}",
                              "eval.num_episodes=6", "eval.num_envs=4", "eval.videos=0", *extra])


def read_results(run_dir: Path) -> dict:
    data = json.loads((run_dir / "eval" / "results.json").read_text())
    data.pop("wall_s")
    return data


# -- statistics ----------------------------------------------------------------------------------------
def wilson_by_roots(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Independently: the Wilson interval is where the score test is not rejected,
    (k/n - p)^2 = z^2 p (1 - p) / n, a quadratic in p whose two roots are the ends."""
    ph = k / n
    a = 1 + z * z / n
    b = -(2 * ph + z * z / n)
    c = ph * ph
    lo, hi = sorted(np.roots([a, b, c]).real)
    return max(lo, 0.0), min(hi, 1.0)


@pytest.mark.parametrize("k,n,expected", [
    (0, 10, (0.0, 0.2775)),  # reference values, 4 decimals (Newcombe 1998 / any Wilson table)
    (10, 10, (0.7225, 1.0)),
    (5, 10, (0.2366, 0.7634)),
    (81, 263, (0.2553, 0.3662)),
])
def test_wilson_interval_matches_reference_values(k, n, expected):
    lo, hi = ev.wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(wilson_by_roots(k, n), abs=1e-9)
    assert (round(lo, 4), round(hi, 4)) == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_edges():
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = ev.wilson_interval(50, 100, z=2.575829)  # 99%: wider than 95%
    lo95, hi95 = ev.wilson_interval(50, 100)
    assert lo < lo95 and hi > hi95
    with pytest.raises(ValueError):
        ev.wilson_interval(11, 10)


# -- reproducibility, files ------------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [True, False])
def test_same_checkpoint_and_seeds_give_identical_results(mlp_run, tmp_path, deterministic):
    extra = f"eval.deterministic={str(deterministic).lower()}"
    ev.run_eval(eval_cfg(tmp_path, mlp_run, extra))
    first = read_results(mlp_run)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    np.random.seed(5)
    ev.run_eval(eval_cfg(tmp_path, mlp_run, extra))
    assert read_results(mlp_run) == first
    assert first["deterministic"] is deterministic
    # other seeds: other goals, other numbers
    ev.run_eval(eval_cfg(tmp_path, mlp_run, extra, "eval.seed=7"))
    other = read_results(mlp_run)
    assert other["seed"] == 7 and other["tasks"] != first["tasks"]


def test_results_json_and_md_follow_the_schema(mlp_run, tmp_path, capsys):
    returned = ev.run_eval(eval_cfg(tmp_path, mlp_run))
    data = json.loads((mlp_run / "eval" / "results.json").read_text())
    for key in ("checkpoint", "env", "deterministic", "seed", "num_episodes", "tasks", "overall", "command", "wall_s"):
        assert key in data, key
    assert data["checkpoint"] == str(mlp_run) and data["command"] == " ".join(sys.argv)
    assert data["env"]["structured"]["horizon"] == 2 and data["env"]["id"] == "structured"  # the checkpoint's env
    assert list(data["tasks"]) == ["structured"]
    summary_keys = {"success_rate", "ci95", "episodes", "successes", "mean_length", "mean_return"}
    for s in [*data["tasks"].values(), data["overall"]]:
        assert summary_keys <= set(s)
        assert s["episodes"] == 6 and s["success_rate"] == s["successes"] / 6
        assert list(s["ci95"]) == pytest.approx(ev.wilson_interval(s["successes"], 6))
        assert s["mean_length"] == 2.0  # horizon 2, no termination on success: every episode runs 2 steps
    assert returned["overall"] == data["overall"]
    md = (mlp_run / "eval" / "results.md").read_text()
    assert "| task | policy: success | policy: 95% CI | policy: episodes | policy: mean length |" in md
    assert "| structured |" in md
    assert md.strip() in capsys.readouterr().out


def test_env_overrides_evaluate_elsewhere(mlp_run, tmp_path):
    agent, cfg = load_agent(mlp_run, ["env.structured.horizon=3"])
    assert cfg.env.structured.horizon == 3 and not agent.training
    # a recipe / command-line env field wins over the checkpoint's
    ev.run_eval(eval_cfg(tmp_path, mlp_run), env_settings={"structured": {"horizon": 3}})
    data = read_results(mlp_run)
    assert data["env"]["structured"]["horizon"] == 3 and data["overall"]["mean_length"] > 2


def test_episode_slots_are_exact_per_task(mlp_run):
    agent, cfg = load_agent(mlp_run)
    for n, envs in ((1, 4), (5, 2), (7, 3)):
        r = ev.evaluate_policy(agent, cfg.env, num_episodes=n, seed=3, num_envs=envs)
        assert r["tasks"]["structured"]["episodes"] == n and r["overall"]["episodes"] == n


def test_multi_task_envs_get_num_episodes_per_task(mlp_run, monkeypatch):
    from vla_structppo.envs import StructuredTaskVectorEnv

    # a multi-task env names each env's task (task_labels of the env contract); here 3 envs: task a, b, a
    init = StructuredTaskVectorEnv.__init__

    def labelled(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.task_labels = ["a" if j % 2 == 0 else "b" for j in range(self.num_envs)]

    monkeypatch.setattr(StructuredTaskVectorEnv, "__init__", labelled)
    agent, cfg = load_agent(mlp_run)
    r = ev.evaluate_policy(agent, cfg.env, num_episodes=5, seed=3, num_envs=3)
    assert list(r["tasks"]) == ["a", "b"]
    assert [s["episodes"] for s in r["tasks"].values()] == [5, 5] and r["overall"]["episodes"] == 10
    assert r["overall"]["successes"] == sum(s["successes"] for s in r["tasks"].values())
    md = ev.results_markdown({"checkpoint": "x", "deterministic": True, "num_episodes": 5, "seed": 3,
                              "command": "c", **r})
    assert "| a |" in md and "| b |" in md and "| **overall** |" in md


# -- image observations: a VLA, videos ------------------------------------------------------------------
def test_vla_eval_writes_playable_videos_and_is_reproducible(vla_checkpoint, tmp_path):
    import imageio

    run_dir = vla_checkpoint.parent.parent
    extra = ("eval.num_episodes=2", "eval.num_envs=2", "eval.videos=1", "eval.deterministic=false")
    ev.run_eval(eval_cfg(tmp_path, vla_checkpoint, *extra))
    first = read_results(run_dir)
    videos = sorted((run_dir / "eval" / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["policy_structured_ep000.mp4"]
    assert first["videos"] == ["videos/policy_structured_ep000.mp4"]
    assert videos[0].stat().st_size > 0
    reader = imageio.get_reader(str(videos[0]))
    assert reader.count_frames() == 3  # 2 steps: 2 observations + the final one
    frame = reader.get_data(0)
    assert frame.shape[0] >= 128 and frame.shape[0] % 16 == 0
    reader.close()
    ev.run_eval(eval_cfg(tmp_path, vla_checkpoint, *extra))
    assert read_results(run_dir) == first


# -- compare, expert --------------------------------------------------------------------------------------
def test_compare_mode_on_the_same_seeds(mlp_run, tmp_path):
    first = ckpt.list_checkpoints(mlp_run)[0]
    results = ev.run_eval(eval_cfg(tmp_path, mlp_run, f"eval.compare={first}"))
    data = read_results(mlp_run)
    assert list(data["compare"]) == [str(first)]
    assert data["compare"][str(first)]["tasks"]["structured"]["episodes"] == 6
    md = (mlp_run / "eval" / "results.md").read_text()
    assert f"| {first.name}: success |" in md and "| policy: success |" in md
    # a policy compared with itself on the same seeds scores exactly the same
    ev.run_eval(eval_cfg(tmp_path, mlp_run, f"eval.compare={mlp_run}"))
    same = read_results(mlp_run)
    assert same["compare"][str(mlp_run)]["tasks"] == same["tasks"]
    assert results["compare"][str(first)]["checkpoint"] == str(first)


def test_expert_mode(mlp_run, tmp_path):
    ev.run_eval(eval_cfg(tmp_path, mlp_run, "eval.expert=true"))
    data = read_results(mlp_run)
    expert = data["compare"]["expert"]
    assert expert["overall"]["success_rate"] == 1.0 and expert["overall"]["episodes"] == 6
    assert "expert: success" in (mlp_run / "eval" / "results.md").read_text()


# -- errors, hub seam --------------------------------------------------------------------------------------
def test_missing_checkpoint_is_a_clear_error(tmp_path, mlp_run, capsys):
    from vla_structppo.cli import main

    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        load_agent(tmp_path / "nope")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", f"output_dir={tmp_path}", f"eval.checkpoint={tmp_path / 'nope'}"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(ckpt.list_checkpoints(mlp_run)[-1], broken)
    (broken / "policy.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="policy.safetensors"):
        load_agent(broken)
    from vla_structppo.config import ConfigError

    with pytest.raises(ConfigError, match="eval.checkpoint"):
        ev.run_eval(load_config(None, [f"output_dir={tmp_path}"]))


def test_hf_paths_resolve_in_one_place(mlp_run, monkeypatch):
    calls = []
    monkeypatch.setattr("vla_structppo.checkpoints.locate.download",
                        lambda uri: calls.append(uri) or ckpt.list_checkpoints(mlp_run)[-1])
    agent, cfg = load_agent("hf://org/name@v1")
    assert calls == ["hf://org/name@v1"] and cfg.env.structured.horizon == 2


# -- during training -------------------------------------------------------------------------------------
def test_evaluation_during_training_leaves_training_unchanged(tmp_path, monkeypatch):
    common = RUN + [f"output_dir={tmp_path}", "ppo.total_timesteps=96", "logging.checkpoint_every=0",
                    "eval.num_episodes=4", "eval.num_envs=2", "eval.deterministic=false"]
    plain = train(load_config(None, common + ["name=plain"]))
    cfg = load_config(None, common + ["name=with_eval", "eval.every=1"])
    if "evaluate_during_training" not in Path(ppo.__file__).read_text():
        # until the trainer calls it: evaluate right after every rollout (between the rollout and the
        # minibatch shuffles, where a disturbed RNG would show at once)
        real = ppo.collect_rollout
        count = {"update": 0}

        def rollout_then_eval(agent, *args, **kwargs):
            out = real(agent, *args, **kwargs)
            count["update"] += 1
            metrics = ev.evaluate_during_training(agent, cfg, count["update"])
            assert set(metrics) >= {"eval/success_rate", "eval/ci_low", "eval/ci_high", "eval/mean_length",
                                    "eval/mean_return"}
            return out

        monkeypatch.setattr(ppo, "collect_rollout", rollout_then_eval)
    evaluated = train(cfg)

    def learning(rows):
        return [{k: v for k, v in r.items() if not k.startswith((*TIMING_PREFIXES, "eval/"))} for r in rows]

    assert len(plain.history) == 3
    assert learning(evaluated.history) == learning(plain.history)
    for a, b in zip(plain.agent.state_dict().values(), evaluated.agent.state_dict().values()):
        assert torch.equal(a, b)
    files = sorted((cfg.run_dir / "eval").glob("update_*.json"))
    assert [f.name for f in files] == ["update_000001.json", "update_000002.json", "update_000003.json"]
    data = json.loads(files[0].read_text())
    assert data["num_episodes"] == 4 and data["overall"]["episodes"] == 4 and data["update"] == 1
