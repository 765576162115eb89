"""GRPO inside the toolkit (``advantage.estimator: grpo``): groups of envs started alike, one whole episode each,
group-relative outcome advantages, no critic; the errors a user meets first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import QUIET

from vla_structppo.config import ConfigError, EnvConfig, StructuredEnvConfig, load_config
from vla_structppo.envs import make_env
from vla_structppo.train.group_rollout import group_seeds

GRPO = ["advantage.estimator=grpo", "advantage.group_size=4"]


def test_group_seeds_are_equal_within_a_group_and_differ_across_groups_and_updates():
    seeds = group_seeds(1, rank=0, update=3, num_envs=8, group_size=4)
    assert len(set(seeds[:4])) == 1 and len(set(seeds[4:])) == 1 and seeds[0] != seeds[4]
    assert group_seeds(1, 0, 4, 8, 4)[0] != seeds[0] and group_seeds(1, 1, 3, 8, 4)[0] != seeds[0]
    np.testing.assert_array_equal(seeds, group_seeds(1, 0, 3, 8, 4))  # a resumed run draws the same groups


def test_the_structured_task_restarts_envs_with_equal_seeds_alike():
    env = make_env(EnvConfig(id="structured", action_dims=3, num_bins=5, structured=StructuredEnvConfig(horizon=3)),
                   6, seed=0)
    obs, _ = env.reset(seed=[7, 7, 7, 9, 9, 9], options={"repeat": True})
    assert (obs[0] == obs[1]).all() and (obs[1] == obs[2]).all() and (obs[3] == obs[5]).all()
    assert not (obs[0] == obs[3]).all()
    again, _ = env.reset(seed=[7, 7, 7, 9, 9, 9], options={"repeat": True})
    np.testing.assert_array_equal(obs, again)


@pytest.mark.sim
def test_metaworld_restarts_envs_with_equal_seeds_alike():
    pytest.importorskip("metaworld")
    cfg = EnvConfig(id="metaworld", task="reach-v3", action_dims=4, num_bins=11, max_episode_steps=5)
    env = make_env(cfg, 4, seed=0)
    try:
        obs, _ = env.reset(seed=[11, 11, 12, 12], options={"repeat": True})
        np.testing.assert_array_equal(obs[0], obs[1])
        np.testing.assert_array_equal(obs[2], obs[3])
        assert not np.array_equal(obs[0], obs[2])  # another goal
    finally:
        env.close()


@pytest.mark.sim
def test_multi_task_envs_give_each_group_one_task():
    pytest.importorskip("metaworld")
    from vla_structppo.envs.metaworld import make_metaworld_env

    cfg = EnvConfig(id="metaworld", task="MT10", action_dims=4, num_bins=11, max_episode_steps=5)
    env = make_metaworld_env(cfg, 8, seed=0, group_size=4)
    try:
        labels = env.task_labels
        assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
    finally:
        env.close()


def test_grpo_trains_without_a_critic(tmp_path):
    from vla_structppo.train.ppo import train

    cfg = load_config("recipes/structured/quickstart.yaml", [
        f"output_dir={tmp_path}", *QUIET, *GRPO, "env.num_envs=16", "ppo.total_timesteps=320",
        "rollout.filter_groups=[0.0,1.0]", "ppo.loss_aggregation=token_mean", "ppo.clip_range_high=0.28",
        "ppo.dual_clip=3.0", "credit.ratio=token"])
    assert not cfg.needs_critic and cfg.num_updates == 20  # 320 env steps / (16 envs x 1-step episodes)
    result = train(cfg)
    assert result.agent.value_head is None
    assert {"rollout/groups_kept", "rollout/group_success_rate"} <= set(result.final)
    assert "losses/explained_variance" not in result.final
    ckpt = cfg.run_dir / "checkpoints" / "last"
    assert not (ckpt / "value_head.safetensors").exists() and (ckpt / "advantage_head.safetensors").is_file()
    # resume continues from it
    from vla_structppo.checkpoints.rundir import config_to_resume

    resumed = train(config_to_resume(str(cfg.run_dir), [f"resume={cfg.run_dir}", "ppo.total_timesteps=384"]))
    assert [r["charts/update"] for r in resumed.history] == [21.0, 22.0, 23.0, 24.0]


def test_grpo_learns_the_bandit(tmp_path):
    """GRPO's advantage alone (no critic, no baseline beyond the group's mean) lifts the return of the structured
    bandit well above the random policy's within a few thousand env steps."""
    from vla_structppo.train.ppo import train

    torch.manual_seed(0)
    cfg = load_config("recipes/structured/quickstart.yaml", [f"output_dir={tmp_path}", *QUIET, *GRPO,
                                                             "credit.mode=joint", "ppo.total_timesteps=4096"])
    history = train(cfg).history
    first, last = history[0]["rollout/normalized_return"], np.mean([r["rollout/normalized_return"]
                                                                    for r in history[-5:]])
    assert first < 0.4 and last > 0.75, (first, last)


@pytest.mark.parametrize("overrides, key", [
    (["advantage.group_size=3"], "advantage.group_size=3 must divide env.num_envs=16"),
    (["advantage.group_size=0"], "advantage.group_size must be >= 1"),
    (["ppo.critic_warmup_updates=2"], "ppo.critic_warmup_updates"),
    (["rollout.filter_groups=[0.9,0.1]"], "rollout.filter_groups must be [low, high]"),
    (["advantage.estimator=grpo2"], "advantage.estimator='grpo2' is not one of"),
])
def test_bad_grpo_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_config(None, ["env.num_envs=16", *GRPO, *overrides])


def test_filtering_groups_needs_grpo():
    with pytest.raises(ConfigError, match="needs advantage.estimator=grpo"):
        load_config(None, ["rollout.filter_groups=[0.1,0.9]"])


def test_grpo_refuses_an_env_that_cannot_restart_alike(tmp_path, monkeypatch):
    """An env kind whose envs cannot be restarted from one initial state (``repeatable_resets`` false) is refused
    before the first update, naming the key to change."""
    from vla_structppo.envs import registry
    from vla_structppo.envs.structured import StructuredTaskVectorEnv
    from vla_structppo.train.ppo import train

    class OneStart(StructuredTaskVectorEnv):
        repeatable_resets = False

    def once(cfg, num_envs, seed, chunk_size, group_size):
        return OneStart(registry.structured_spec(cfg), num_envs, seed=seed)

    monkeypatch.setitem(registry.ENVS, "structured", once)
    cfg = load_config("recipes/structured/quickstart.yaml", [f"output_dir={tmp_path}", *QUIET, *GRPO])
    with pytest.raises(ConfigError, match="advantage.estimator=gae"):
        train(cfg)
    assert not cfg.run_dir.exists()  # refused before the run dir was written


def test_grpo_needs_groups_within_a_process(tmp_path):
    from vla_structppo.train.ppo_setup import _check_trainable

    cfg = load_config(None, ["env.num_envs=8", *GRPO])
    _check_trainable(cfg, world=1)
    with pytest.raises(ConfigError, match="advantage.group_size=4 must divide the 2 envs"):
        _check_trainable(cfg, world=4)


def test_minibatches_are_always_as_many_parts_as_asked():
    """Every process must take as many optimizer steps; GRPO's batch sizes are whatever the kept groups give."""
    from vla_structppo.train.advantages import minibatches

    torch.manual_seed(0)
    parts = minibatches(5, 4)
    assert [len(p) for p in parts] == [2, 1, 1, 1]  # chunk would give 3 parts of 2, 2, 1
    assert sorted(torch.cat(parts).tolist()) == list(range(5))
    assert [len(p) for p in minibatches(0, 3)] == [0, 0, 0]
    torch.manual_seed(0)
    even = minibatches(8, 4)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(even, torch.randperm(8).chunk(4), strict=True))  # as before


def test_an_update_that_keeps_no_group_trains_nothing_and_goes_on(tmp_path):
    """Groups of 2 have success rates 0, 0.5 or 1: a band of [0.3, 0.3] drops every group of every update."""
    from vla_structppo.train.ppo import train

    cfg = load_config("recipes/structured/quickstart.yaml", [
        f"output_dir={tmp_path}", *QUIET, "advantage.estimator=grpo", "advantage.group_size=2", "env.num_envs=8",
        "ppo.total_timesteps=32", "rollout.filter_groups=[0.3,0.3]", "logging.plot_every=1"])
    result = train(cfg)
    assert [r["rollout/groups_kept"] for r in result.history] == [0.0] * 4
    assert not any("losses/policy_loss" in r for r in result.history)
    assert not list((cfg.run_dir / "plots").glob("credit_*.png"))  # nothing to plot
