"""Strict config: every bad input fails early, clearly, and before torch is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vla_structppo import config as C
from vla_structppo.config import ConfigError, load_config

RECIPES = sorted(p for p in Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml") if "accelerate" not in p.parts)


def test_every_recipe_loads_and_validates():
    assert len(RECIPES) >= 6
    for path in RECIPES:
        load_config(path)


def test_choice_lists_match_the_code():
    from vla_structppo import algo
    from vla_structppo.envs import registry
    from vla_structppo.policies.agent import STATE_POLICIES

    assert C.CREDIT_MODES == algo.CREDIT_MODES and C.HEAD_MODES == algo.HEAD_MODES
    assert C.CENTERINGS == algo.CENTERINGS and C.RATIOS == algo.RATIOS
    assert C.BASELINE_SCALES == algo.BASELINE_SCALES
    from vla_structppo.algo.losses import AGGREGATIONS
    from vla_structppo.config import choices
    from vla_structppo.data.chunks import CHUNK_TAILS
    from vla_structppo.policies.parallel_decoding import DECODINGS

    assert choices.AGGREGATIONS == AGGREGATIONS and choices.CHUNK_TAILS == CHUNK_TAILS
    assert choices.DECODINGS == DECODINGS
    from vla_structppo.envs.structured import HORIZON_ENDS

    assert C.HORIZON_ENDS == HORIZON_ENDS
    assert (*STATE_POLICIES, "vla") == C.POLICY_TYPES
    assert tuple(registry.ENVS) == tuple(registry.TASKS) == C.ENV_IDS
    assert all(hasattr(C.EnvConfig(), env_id) for env_id in C.ENV_IDS)  # one config section per env


def test_unknown_recipe_key_names_it_and_the_nearest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  lerning_rate: 0.001\n")
    with pytest.raises(ConfigError, match=r"unknown key 'ppo.lerning_rate'; did you mean 'ppo.learning_rate'"):
        load_config(bad)


def test_unknown_top_level_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'sed'; did you mean 'seed'"):
        load_config(bad)


def test_wrong_type_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  num_steps: many\n")
    with pytest.raises(ConfigError, match="ppo.num_steps"):
        load_config(bad)
    with pytest.raises(ConfigError, match="env.num_envs"):
        load_config(None, ["env.num_envs=1.5"])


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="recipe file not found: 'nope.yaml'"):
        load_config("nope.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["credit.mode=counterfactual", "head.enabled=false"], "head.enabled=false"),
    (["credit.mode=conterfactual"], "did you mean 'counterfactual'"),
    (["head.centering=mean"], "head.centering"),
    (["env.num_bins=1"], "env.num_bins must be >= 2"),
    (["env.structured.pairs=[{i: 0, j: 9}]"], r"env.structured.pairs\[0\]"),
    (["env.structured.dim_weights=[1, 2]"], "dim_weights"),
    (["env.num_envs=10", "ppo.num_steps=1", "ppo.num_minibatches=4"], "not divisible"),
    (["ppo.learning_rate=0"], "learning_rate"),
    (["env.metaworld.action_repeat=3"], r"env.metaworld.\* is set but env.id='structured'"),
    (["env.metaworld.mesh_lod=0.04"], r"env.metaworld.\* is set but env.id='structured'"),
    (["env.id=metaworld", "env.task=reach-v3", "env.structured.horizon=3"], r"env.structured.\* is set but env.id='metaworld'"),
    (["env.id=metaworld", "env.task=reach-v3", "env.metaworld.mesh_lod=1.5"], r"env.metaworld.mesh_lod must lie in \[0, 1\)"),
    (["env.id=metaworld", "env.task=reach-v3", "env.metaworld.action_repeat=0"], "env.metaworld.action_repeat must be >= 1"),
    (["ppo.reward_scale=0"], "ppo.reward_scale must be > 0"),
    (["ppo.critic_warmup_updates=-1"], "ppo.critic_warmup_updates must be >= 0"),
    (["ppo.num_minibatches=0"], "ppo.num_minibatches must be >= 1"),
    (["ppo.gradient_accumulation_steps=0"], "ppo.gradient_accumulation_steps must be >= 1"),
])
def test_impossible_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_overrides_are_typed():
    cfg = load_config(None, ["ppo.learning_rate=1e-3", "env.structured.pairs=[{i: 0, j: 1, weight: 2}]", "ppo.target_kl=0.02"])
    assert cfg.ppo.learning_rate == 1e-3 and cfg.env.structured.pairs[0].weight == 2.0 and cfg.ppo.target_kl == 0.02


def test_resolved_config_round_trips():
    cfg = load_config(RECIPES[0])
    assert C.config_from_yaml_text(C.to_yaml(cfg)) == cfg


def test_every_field_has_a_docstring():
    docs = C.field_docs()
    import dataclasses

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            sub = C._dataclass_of(cls, f.name)
            if sub is not None and f.name != "pairs":
                yield from walk(sub, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    missing = [k for k in walk(C.TrainConfig) if k not in docs]
    assert not missing, missing


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom vla_structppo.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_cli_fails_before_heavy_imports(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("credit:\n  mode: structured\nhead:\n  enabled: false\n")
    for args in (("train", str(bad)), ("train", "missing.yaml"), ("train", "ppo.lerning_rate=1")):
        out = _cli(*args)
        assert "EXIT 2 False" in out.stdout, (args, out.stdout, out.stderr)
        assert "error:" in out.stderr


def test_cli_config_prints_resolved_yaml():
    out = subprocess.run([sys.executable, "-m", "vla_structppo", "config", str(RECIPES[0]), "ppo.clip_coef=0.3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "clip_coef: 0.3" in out.stdout


@pytest.mark.parametrize("old, new", [("env.horizon=3", "env.structured.horizon"),
                                      ("env.camera=corner3", "env.metaworld.camera"),
                                      ("env.task_seed=1", "env.structured.task_seed or env.metaworld.task_seed")])
def test_moved_env_keys_name_their_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=f"moved to {new}"):
        load_config(None, [old])
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"env:\n  {old.split('.', 1)[1].replace('=', ': ')}\n")
    with pytest.raises(ConfigError, match=f"moved to {new}"):
        load_config(recipe)


def test_a_checkpoint_config_of_the_flat_env_layout_is_migrated():
    """config.yaml files written before env was split per environment still load (pushed checkpoints)."""
    import yaml

    tree = yaml.safe_load(C.to_yaml(load_config(None, ["env.id=metaworld", "env.task=reach-v3"])))
    for section in C.ENV_IDS:
        tree["env"].pop(section)
    tree["env"].update(camera="corner3", horizon=5, task_seed=7, mesh_lod=0.04)  # the flat layout
    cfg = C.config_from_yaml_text(yaml.safe_dump(tree))
    assert (cfg.env.metaworld.camera, cfg.env.metaworld.task_seed, cfg.env.metaworld.mesh_lod) == ("corner3", 7, 0.04)
    assert cfg.env.structured == C.StructuredEnvConfig()  # another env's old key had no effect: dropped
