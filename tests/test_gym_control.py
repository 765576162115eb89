"""``env.id: gym``: gymnasium continuous control as D x K bins, CleanRL's normalisation, exact state, learning.

The MuJoCo envs come with the ``mujoco`` extra (CI installs it); Pendulum-v1 (classic control) needs nothing.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import QUIET

from vla_structppo.bins import BinGrid
from vla_structppo.config import ConfigError, load_config
from vla_structppo.envs import check_env, make_env
from vla_structppo.envs.contract import EnvError
from vla_structppo.envs.normalize import EnvNormalizer, NormalizationConfig, RunningMeanStd

# find_spec, not import: importing mujoco here would fix its GL backend before envs/headless_gl.py picks one
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                                reason="the MuJoCo envs need the mujoco extra: pip install -e '.[mujoco]'")


def gym_cfg(task: str, dims: int, *extra: str):
    return load_config(None, ["env.id=gym", f"env.task={task}", f"env.action_dims={dims}", *extra])


# -- the discretisation --------------------------------------------------------------------------
def test_bins_are_the_tokenizer_grid_over_the_envs_own_bounds():
    cfg = gym_cfg("Pendulum-v1", 1, "env.num_bins=5", "env.num_envs=1")
    env = make_env(cfg.env, 1, seed=0)
    try:
        check_env(env)
        assert isinstance(env.grid, BinGrid) and env.action_bounds == ([-2.0], [2.0])
        np.testing.assert_allclose(env.decode(np.arange(5)[:, None])[:, 0], np.linspace(-2, 2, 5))
        np.testing.assert_array_equal(env.grid.encode(env.decode(np.arange(5)[:, None])), np.arange(5)[:, None])
        env.reset(seed=0)
        for k in range(5):  # the simulator receives exactly the decoded bin
            env.step(np.array([[k]]))
            applied = env.call("get_wrapper_attr", "last_u")[0]
            assert float(applied) == pytest.approx(np.linspace(-2, 2, 5)[k])
    finally:
        env.close()


def test_multi_dim_bounds_come_from_the_env():
    env = make_env(gym_cfg("HalfCheetah-v5", 6, "env.num_envs=1").env, 1, seed=0)
    try:
        assert env.single_action_space.nvec.tolist() == [11] * 6
        assert env.action_bounds == ([-1.0] * 6, [1.0] * 6)
        assert env.single_observation_space.shape == (17,)
    finally:
        env.close()


# -- normalisation ---------------------------------------------------------------------------------------
def test_running_statistics_match_the_whole_stream():
    rms, rng = RunningMeanStd((3,)), np.random.default_rng(0)
    chunks = [rng.normal(2.0, 3.0, (n, 3)) for n in (1, 7, 50, 3)]
    for c in chunks:
        rms.update(c)
    data = np.concatenate(chunks)
    # the 1e-4 pseudo-count at mean 0 / var 1 is the only difference (gymnasium's convention)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)


def test_normaliser_formulas_and_exact_round_trip_through_json():
    norm = EnvNormalizer(2, 3, NormalizationConfig(clip_obs=5.0, clip_reward=10.0, gamma=0.9))
    rng = np.random.default_rng(1)
    for _ in range(20):
        obs = norm.observations(rng.normal(10, 2, (3, 2)))
        norm.rewards(rng.normal(0, 5, 3), np.array([False, True, False]))
    assert np.all(np.abs(obs) <= 5.0)
    x = rng.normal(10, 2, (3, 2))
    expected = np.clip((x - norm.obs_rms.mean) / np.sqrt(norm.obs_rms.var + 1e-8), -5, 5).astype(np.float32)
    np.testing.assert_array_equal(norm.transform(x), expected)
    copy = EnvNormalizer(2, 3, norm.config)
    copy.load_state_dict(json.loads(json.dumps(norm.state_dict())))
    for a, b in ((copy.obs_rms.mean, norm.obs_rms.mean), (copy.obs_rms.var, norm.obs_rms.var),
                 (copy.returns, norm.returns)):
        np.testing.assert_array_equal(a, b)
    r = rng.normal(0, 5, 3)
    np.testing.assert_array_equal(copy.rewards(r, np.zeros(3, bool)), norm.rewards(r, np.zeros(3, bool)))
    # the return accumulates over truncations and restarts only on termination (gymnasium's NormalizeReward)
    n = EnvNormalizer(1, 1, NormalizationConfig(gamma=0.5))
    n.rewards(np.array([2.0]), np.array([False]))
    n.rewards(np.array([1.0]), np.array([False]))
    assert n.returns.tolist() == [2.0]
    n.rewards(np.array([1.0]), np.array([True]))
    assert n.returns.tolist() == [1.0]


def test_episode_returns_in_the_metrics_stay_raw():
    env = make_env(gym_cfg("Pendulum-v1", 1, "env.num_envs=2", "env.gym.time_limit=5").env, 2, seed=0)
    try:
        env.reset(seed=0)
        raw = np.zeros(2)
        for _ in range(5):
            _, reward, _, _, info = env.step(np.full((2, 1), 3))
            raw += info["raw_reward"]
        np.testing.assert_allclose(info["episode_return"], raw)
        assert not np.allclose(reward, info["raw_reward"])  # the trainer sees scaled rewards
    finally:
        env.close()


# -- exact state -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,dims", [("Pusher-v5", 7), ("Hopper-v5", 3), ("Pendulum-v1", 1)])
def test_saved_state_continues_bit_exactly_across_episode_ends(task, dims):
    cfg = gym_cfg(task, dims, "env.num_envs=2", "env.gym.time_limit=7")
    env = make_env(cfg.env, 2, seed=3)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 11, (30, 2, dims))
    try:
        env.reset(seed=3)
        for a in actions[:4]:
            env.step(a)
        state = env.get_state()
        # through torch.save / weights_only load, as checkpoints keep it
        from vla_structppo.checkpoints.store import to_torch_tree

        path = f"/tmp/gym_state_{task}.pt"
        torch.save(to_torch_tree(state), path)
        first = [env.step(a) for a in actions[4:]]
        other = make_env(cfg.env, 2, seed=99)
        other.reset(seed=99)
        other.set_state(torch.load(path, weights_only=True))
        second = [other.step(a) for a in actions[4:]]
        other.close()
    finally:
        env.close()
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(tr1, tr2)
        np.testing.assert_array_equal(te1, te2)
        np.testing.assert_array_equal(i1["raw_reward"], i2["raw_reward"])
        if "episode_return" in i1:
            np.testing.assert_array_equal(i1["episode_return"], i2["episode_return"])
    assert any("episode_return" in step[4] for step in first)  # the window crossed an episode end


# -- training, checkpoints, resume, eval ----------------------------------------------------------------
PENDULUM = ["env.id=gym", "env.task=InvertedPendulum-v5", "env.action_dims=1", "env.num_envs=1",
            "ppo.num_steps=2048", "ppo.num_epochs=10", "ppo.num_minibatches=32", "ppo.learning_rate=3e-4",
            "ppo.lr_schedule=linear", "ppo.ent_coef=0.0", "policy.value_network=separate",
            "policy.orthogonal_init=true", "credit.mode=joint", "head.enabled=false", *QUIET]


def test_joint_ppo_learns_inverted_pendulum_with_a_fixed_seed(tmp_path):
    from vla_structppo.train.ppo import train

    history = train(load_config(None, [*PENDULUM, "seed=1", "ppo.total_timesteps=40960",
                                       f"output_dir={tmp_path}", "name=ip", "logging.checkpoint_every=0"])).history
    returns = [r["rollout/ep_return_mean"] for r in history]
    # random bins balance ~5 steps; CleanRL's Gaussian PPO passes 300 at ~40k steps
    assert np.mean(returns[:2]) < 15 and np.mean(returns[-3:]) > 200, returns


def test_normalisation_travels_with_checkpoints_resume_and_eval(tmp_path):
    from vla_structppo.checkpoints import load_agent
    from vla_structppo.eval import evaluate_policy
    from vla_structppo.train.ppo import TIMING_PREFIXES, train

    common = [*PENDULUM, "ppo.num_steps=256", "ppo.num_minibatches=4", "ppo.num_epochs=2", "credit.mode=counterfactual",
              "head.enabled=true", "ppo.total_timesteps=1024", "logging.checkpoint_every=1", "logging.keep_checkpoints=0",
              f"output_dir={tmp_path}"]
    full = train(load_config(None, [*common, "name=run"]))
    ckpt = tmp_path / "run" / "checkpoints" / "000002"
    saved = json.loads((ckpt / "env_normalization.json").read_text())
    assert saved["obs"]["count"] > 512  # it took in every observation so far
    resumed = train(load_config(None, [*common, "name=run", f"resume={ckpt}"]))

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]

    assert strip(full.history[2:]) == strip(resumed.history)  # statistics, sims and RNG continued exactly
    assert "credit/action_variance_share" in full.history[-1]

    agent, cfg = load_agent(tmp_path / "run")
    last = json.loads((tmp_path / "run" / "checkpoints" / "last" / "env_normalization.json").read_text())
    assert agent.env_normalization == last
    a = evaluate_policy(agent, cfg.env, num_episodes=2, seed=0, num_envs=1)
    assert agent.env_normalization == last  # frozen: evaluating changed nothing
    assert evaluate_policy(agent, cfg.env, num_episodes=2, seed=0, num_envs=1)["overall"] == a["overall"]
    agent.env_normalization = None  # without its statistics the same policy sees other observations
    b = evaluate_policy(agent, cfg.env, num_episodes=2, seed=0, num_envs=1)
    assert b["overall"]["mean_return"] != a["overall"]["mean_return"]


def test_autoregressive_policy_runs_on_it(tmp_path):
    from vla_structppo.train.ppo import train

    result = train(load_config(None, ["env.id=gym", "env.task=Pusher-v5", "env.action_dims=7", "env.num_envs=2",
                                      "policy.type=ar_mlp", "ppo.num_steps=64", "ppo.total_timesteps=256", *QUIET,
                                      f"output_dir={tmp_path}", "name=ar", "logging.checkpoint_every=0"]))
    assert np.isfinite(result.final["losses/policy_loss"])


# -- bad input --------------------------------------------------------------------------------------------
def test_bad_gym_settings_fail_early_with_the_fix():
    with pytest.raises(EnvError, match="Did you mean.*HalfCheetah-v5"):
        make_env(gym_cfg("HalfCheetah-v9", 6).env, 1, seed=0)
    with pytest.raises(EnvError, match="set env.action_dims=6"):
        make_env(gym_cfg("HalfCheetah-v5", 7).env, 1, seed=0)
    with pytest.raises(EnvError, match="needs a 1-D Box"):
        make_env(gym_cfg("CartPole-v1", 1).env, 1, seed=0)
    with pytest.raises(ConfigError, match="env.gym.time_limit"):
        gym_cfg("HalfCheetah-v5", 6, "env.max_episode_steps=100")
    with pytest.raises(ConfigError, match="env.observation=state"):
        gym_cfg("HalfCheetah-v5", 6, "env.observation=image", "policy.type=vla", "model.name_or_path=x")
    with pytest.raises(ConfigError, match="needs env.task"):
        load_config(None, ["env.id=gym"])
    with pytest.raises(ConfigError, match="policy.value_network"):
        load_config(None, ["policy.value_network=both"])
    assert gym_cfg("Hopper-v5", 3, "ppo.gamma=0.95").env.gym.reward_gamma == 0.95  # follows ppo.gamma


# -- the variance diagnostic --------------------------------------------------------------------------------
def test_action_variance_share_on_a_table_with_a_known_answer():
    """Â = b(s) + u_1(a1) + u_2(a2) + p(a1, a2) + r over a full grid where every part is uncorrelated:
    the shares are the parts' variances over Var[Â], known in closed form."""
    from vla_structppo.algo.heads import HeadOutput
    from vla_structppo.diagnostics import variance_shares

    s, a1, a2, r = np.meshgrid([-1.0, 1.0], [-1.0, 0.0, 1.0], [-2.0, 2.0], [-0.5, 0.5], indexing="ij")
    b, u1, u2, p = 3 * s, a1, a2, 0.5 * a1 * a2 / 2  # centred, mutually orthogonal on the grid
    adv = (b + u1 + u2 + p + r).ravel()
    B = adv.size
    per_dim = torch.tensor(np.stack([u1.ravel(), u2.ravel()], 1))
    pair = torch.zeros(B, 2, 2, dtype=torch.float64)
    pair[:, 0, 1] = torch.tensor(p.ravel())
    head = HeadOutput(torch.tensor(b.ravel()), per_dim, pair, torch.tensor((b + u1 + u2 + p).ravel()))
    shares = variance_shares(head, torch.tensor(adv))
    var = lambda x: float(np.var(x.ravel()))  # noqa: E731 (population variances: ratios are what count)
    total = var(adv)
    assert shares["credit/action_variance_share"] == pytest.approx((var(u1) + var(u2) + var(p)) / total)
    assert shares["credit/state_variance_share"] == pytest.approx(var(b) / total)
    assert shares["credit/residual_variance_share"] == pytest.approx(var(r) / total)
    assert sum(shares.values()) == pytest.approx(1.0)
    const = variance_shares(head, torch.ones(B, dtype=torch.float64))
    assert all(np.isnan(v) for v in const.values())
