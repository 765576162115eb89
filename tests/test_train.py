"""The trainer: learning, exact resume, ratio == 1 at the first minibatch, accumulation invariance,
the non-finite guard, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import QUIET

from vla_structppo import checkpoints as ckpt
from vla_structppo.config import load_config
from vla_structppo.train import ppo, ppo_update, schedule
from vla_structppo.train.ppo import TIMING_PREFIXES, NonFiniteLossError, train


def learning_metrics(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in records]


@pytest.mark.parametrize("mode", ["joint", "counterfactual"])
def test_reaches_90_percent_of_optimal_on_additive_d7(tmp_path, mode):
    cfg = load_config(None, [
        f"output_dir={tmp_path}", f"name={mode}", "seed=1", *QUIET, "env.action_dims=7", "env.num_bins=11",
        "env.structured.num_goals=4", "env.num_envs=64", "ppo.num_steps=4", "ppo.total_timesteps=8192",
        "head.fit_epochs=4", f"credit.mode={mode}",
    ])
    result = train(cfg)
    last = [r["rollout/normalized_return"] for r in result.history[-3:]]
    first = result.history[0]["rollout/normalized_return"]
    assert first < 0.0  # a uniform policy is far from optimal on this task
    assert min(last) >= 0.9, last


@pytest.mark.parametrize("policy", ["mlp", "ar_mlp"])
def test_rollout_logp_equals_first_minibatch_logp(quick_overrides, policy):
    result = train(load_config(None, quick_overrides + [f"policy.type={policy}", "ppo.total_timesteps=128"]))
    assert result.history[0]["losses/first_minibatch_logp_dev"] < 1e-5


# adaptive: a desired KL no update can stay under, so the policy's rate shrinks every update (the scale must resume)
@pytest.mark.parametrize("schedule", [["ppo.lr_schedule=linear"],
                                      ["ppo.lr_schedule=adaptive", "ppo.desired_kl=1e-9"]], ids=["linear", "adaptive"])
def test_resume_continues_exactly(tmp_path, schedule):
    common = [f"output_dir={tmp_path}", "logging.progress_bar=false", "logging.tensorboard=false",
              "logging.plot_every=2", "env.num_envs=8", "ppo.num_steps=4", "env.structured.horizon=3", "env.structured.noise_std=0.1",
              "policy.type=ar_mlp", "ppo.num_minibatches=2", "ppo.total_timesteps=128", *schedule]  # 4 updates
    full = train(load_config(None, common + ["name=full", "logging.checkpoint_every=0"]))
    assert len(full.history) == 4
    # 2 updates, stop (the schedule still spans 4 updates), then resume for the last 2
    part = load_config(None, common + ["name=split", "logging.checkpoint_every=2"])
    import vla_structppo.config as C

    class Stop(Exception):
        pass

    original = ppo.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise Stop

    ppo.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train(part)
    finally:
        ppo.save_checkpoint = original
    resumed = train(C.load_config(None, common + ["name=split", "logging.checkpoint_every=2",
                                                  f"resume={tmp_path / 'split'}"]))
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/update"] for r in lines] == [1, 2, 3, 4]
    assert learning_metrics(lines) == learning_metrics(full.history)
    assert len(resumed.history) == 2
    for a, b in zip(full.agent.state_dict().values(), resumed.agent.state_dict().values()):
        assert torch.equal(a, b)


def test_gradient_accumulation_invariance(quick_overrides):
    """One minibatch of 32 in one pass == the same minibatch in 4 accumulated micro-batches."""
    base = quick_overrides + ["ppo.total_timesteps=64", "ppo.num_minibatches=2", "env.num_envs=16"]
    a = train(load_config(None, base + ["name=gas1", "ppo.gradient_accumulation_steps=1"]))
    b = train(load_config(None, base + ["name=gas4", "ppo.gradient_accumulation_steps=4"]))
    for (name, x), y in zip(a.agent.state_dict().items(), b.agent.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_non_finite_loss_skips_then_aborts_keeping_last_checkpoint(quick_overrides, monkeypatch):
    cfg = load_config(None, quick_overrides + ["name=nan", "ppo.total_timesteps=640", "logging.checkpoint_every=1",
                                               "ppo.max_nan_updates=3"])
    real = ppo_update.ppo_policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        calls["n"] += 1
        # updates 1-2 are healthy (4 epochs x 4 minibatches each), everything after is NaN
        return (loss * float("nan") if calls["n"] > 32 else loss), m

    monkeypatch.setattr(ppo_update, "ppo_policy_loss", poisoned)
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(NonFiniteLossError, match="the last good checkpoint is"):
        train(cfg)
    run = cfg.run_dir
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["000001", "000002"]
    last = ckpt.resolve(run)
    assert last.name == "000002"
    from safetensors.torch import load_file

    params = load_file(str(last / "policy.safetensors"))
    assert params and all(torch.isfinite(v).all() for v in params.values())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/skipped_update"] for r in lines] == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_checkpoint_layout_and_strict_load(quick_overrides, tmp_path):
    cfg = load_config(None, quick_overrides + ["name=ck", "ppo.total_timesteps=128"])
    train(cfg)
    last = ckpt.resolve(cfg.run_dir)
    names = {p.name for p in last.iterdir()}
    assert names == {"policy.safetensors", "value_head.safetensors", "advantage_head.safetensors",
                     "trainer_state.pt", "rank_0.pt", "config.yaml"}
    assert (cfg.run_dir / "checkpoints" / "last").is_symlink()
    assert not any(p.name.startswith(".tmp") for p in (cfg.run_dir / "checkpoints").iterdir())
    (last / "value_head.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="value_head.safetensors"):
        train(load_config(None, quick_overrides + ["name=ck", "ppo.total_timesteps=256", f"resume={cfg.run_dir}"]))


def test_plots_and_tensorboard_written(quick_overrides):
    cfg = load_config(None, quick_overrides + ["name=plots", "ppo.total_timesteps=128", "logging.plot_every=1",
                                               "logging.tensorboard=true"])
    result = train(cfg)
    pngs = sorted((cfg.run_dir / "plots").glob("credit_*.png"))
    assert len(pngs) == 2 and pngs[0].stat().st_size > 5000
    assert list((cfg.run_dir / "tb").rglob("events.out.tfevents.*"))
    keys = result.final.keys()
    for k in ("losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "losses/entropy",
              "losses/grad_norm", "charts/learning_rate", "charts/SPS", "credit/pair_abs_mean",
              "credit/delta_mean_0", "credit/explained_variance_head"):
        assert k in keys, k
    assert abs(result.final["credit/delta_mean_0"] + sum(result.final[f"credit/delta_mean_{i}"] for i in range(1, 7))) < 1e-6


def test_critic_warmup_trains_the_value_head_only(quick_overrides):
    """During warm-up the policy's parameters stay bit-identical while the value head learns; after it,
    the policy moves."""
    init = train(load_config(None, quick_overrides + ["name=w0", "ppo.total_timesteps=64"]))
    base = quick_overrides + [f"init_from={init.run_dir / 'checkpoints' / 'last'}", "ppo.num_steps=4"]
    warm = train(load_config(None, base + ["name=w1", "ppo.total_timesteps=128", "ppo.critic_warmup_updates=2"]))
    for (name, before), after in zip(init.agent.policy.state_dict().items(), warm.agent.policy.state_dict().values()):
        assert torch.equal(before, after), name
    assert not all(torch.equal(a, b) for a, b in zip(init.agent.value_head.state_dict().values(),
                                                      warm.agent.value_head.state_dict().values()))
    assert all(r["losses/clipfrac"] == 0.0 and r["losses/approx_kl"] == 0.0 for r in warm.history)
    # Adam holds no state for the policy yet (zero gradients would have advanced its step counts and so its
    # bias correction), and does for the value head
    opt = torch.load(warm.run_dir / "checkpoints" / "last" / "trainer_state.pt", weights_only=False)["optimizer"]
    policy_ids, value_ids = opt["param_groups"][0]["params"], opt["param_groups"][1]["params"]
    assert not any(i in opt["state"] for i in policy_ids)
    assert all(i in opt["state"] for i in value_ids)
    moved = train(load_config(None, base + ["name=w2", "ppo.total_timesteps=192", "ppo.critic_warmup_updates=2"]))
    assert moved.history[2]["losses/approx_kl"] > 0.0
    assert not all(torch.equal(a, b) for a, b in zip(init.agent.policy.state_dict().values(),
                                                      moved.agent.policy.state_dict().values()))


def test_reward_scale_scales_value_targets_not_logged_returns(quick_overrides):
    runs = {s: train(load_config(None, quick_overrides + [f"name=rs{s}", "ppo.total_timesteps=64",
                                                          f"ppo.reward_scale={s}", "ppo.norm_adv=false"]))
            for s in (1.0, 0.1)}
    a, b = runs[1.0].history[0], runs[0.1].history[0]
    assert a["rollout/ep_return_mean"] == b["rollout/ep_return_mean"]  # the env's units, unscaled
    assert a["rollout/reward_mean"] == b["rollout/reward_mean"]
    assert b["losses/value_loss"] < a["losses/value_loss"]  # targets 10x smaller


def test_adaptive_lr_scale_steers_to_the_desired_kl():
    desired = 0.01
    assert schedule.adapt_lr_scale(1.0, 0.001, desired) == pytest.approx(1.5)   # under half: faster
    assert schedule.adapt_lr_scale(1.0, 0.05, desired) == pytest.approx(1 / 1.5)  # over twice: slower
    assert schedule.adapt_lr_scale(1.0, 0.01, desired) == 1.0                    # within [half, twice]: kept
    assert schedule.adapt_lr_scale(1.0, float("nan"), desired) == 1.0            # a skipped update changes nothing
    low, high = schedule.ADAPTIVE_SCALE_BOUNDS
    assert schedule.adapt_lr_scale(low, 1.0, desired) == low and schedule.adapt_lr_scale(high, 0.0, desired) == high


def test_adaptive_schedule_moves_only_the_policy_rate(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=adaptive", *QUIET, "env.num_envs=8", "ppo.num_steps=4",
                             "ppo.total_timesteps=128", "ppo.lr_schedule=adaptive", "ppo.desired_kl=1e-9",
                             "ppo.learning_rate=1e-3", "ppo.head_learning_rate=2e-3", "credit.mode=counterfactual"])
    seen = []
    original = ppo.ppo_epochs

    def spy(agent, optimizer, *args, **kwargs):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return original(agent, optimizer, *args, **kwargs)

    ppo.ppo_epochs = spy
    try:
        result = train(cfg)
    finally:
        ppo.ppo_epochs = original
    # every update's KL is far over 2 x 1e-9: the policy's rate falls by 1.5 per update, value and head stay put
    assert [round(lrs[0] / 1e-3, 6) for lrs in seen] == [round(1.5 ** -k, 6) for k in range(4)]
    assert all(lrs[1:] == [1e-3, 2e-3] for lrs in seen)
    assert [r["charts/learning_rate"] for r in result.history] == [lrs[0] for lrs in seen]
    with pytest.raises(Exception, match="desired_kl"):
        load_config(None, ["ppo.lr_schedule=adaptive", "ppo.desired_kl=0"])
