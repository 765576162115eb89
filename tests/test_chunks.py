"""Action chunks executed open loop (envs/chunking.py) and GAE over decisions (algo/gae.py), exactly.

A decision executes H env steps; when the episode ends inside the chunk the remaining actions are dropped.
The decision's reward is the discounted sum of its steps' rewards, the value after it is discounted by
gamma ** (steps executed), and episode statistics count env steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from vla_structppo.algo import chunk_return, compute_gae
from vla_structppo.envs.chunking import ChunkedEnv, ChunkedVectorEnv
from vla_structppo.envs.sim import SimVectorEnv, make_vector
from vla_structppo.envs.structured import StructuredTaskSpec, StructuredTaskVectorEnv


class CountEnv(gym.Env):
    """Step t (0-based) of an episode earns ``10 * (t + 1) + a[0]``; the episode terminates after ``length`` steps
    (or is truncated there with ``truncate``); ``a[1] > 0.5`` solves the task. Every action received is logged."""

    def __init__(self, length: int, truncate: bool = False) -> None:
        self.length, self.truncate = length, truncate
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.received: list[list[float]] = []
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {"success": False}

    def step(self, action):
        self.received.append([float(x) for x in action])
        reward = 10.0 * (self.t + 1) + float(action[0])
        self.t += 1
        end = self.t >= self.length
        obs = np.array([float(self.t)], np.float32)
        return obs, reward, end and not self.truncate, end and self.truncate, {"success": bool(action[1] > 0.5)}


def test_a_chunk_runs_its_actions_in_order_and_stops_where_the_episode_ends():
    env = ChunkedEnv(CountEnv(length=5), chunk_size=3)
    env.reset(seed=0)
    chunk = np.array([[0.1, 0.0], [0.2, 0.0], [0.3, 0.9]], np.float32)
    obs, reward, terminated, truncated, info = env.step(chunk)
    np.testing.assert_allclose(env.unwrapped.received, chunk)
    assert info["chunk_steps"] == 3 and not terminated and info["success"]  # solved at the third step
    assert info["chunk_rewards"] == pytest.approx([10.1, 20.2, 30.3]) and reward == pytest.approx(60.6)
    # steps 4 and 5 end the episode: the chunk's third action is never executed
    obs, reward, terminated, truncated, info = env.step(np.array([[0.4, 0], [0.5, 0], [0.6, 0]], np.float32))
    assert terminated and not truncated and info["chunk_steps"] == 2 and not info["success"]
    assert info["chunk_rewards"] == pytest.approx([40.4, 50.5, 0.0]) and reward == pytest.approx(90.9)
    assert len(env.unwrapped.received) == 5 and float(obs[0]) == 5.0


def test_a_time_limit_inside_a_chunk_truncates_the_decision():
    env = ChunkedEnv(CountEnv(length=2, truncate=True), chunk_size=4)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
    assert truncated and not terminated and info["chunk_steps"] == 2 and reward == pytest.approx(30.0)


def _sim(num_envs: int, chunk: int, length: int) -> SimVectorEnv:
    inner = make_vector([lambda: CountEnv(length)] * num_envs, "sync", chunk_size=chunk)
    return SimVectorEnv(inner, ([-1.0, -1.0], [1.0, 1.0]), 3, task_labels=["count"] * num_envs,
                        instructions=["count"] * num_envs, has_expert=False, chunk_size=chunk)


def test_the_vector_env_reports_decisions_and_exact_episode_statistics():
    """Bins of 3 levels (-1, 0, 1) on both dims; episodes of 5 steps in chunks of 2: decisions of 2, 2, 1 steps."""
    envs = _sim(num_envs=2, chunk=2, length=5)
    envs.reset(seed=0)
    assert envs.single_action_space.shape == (4,)  # H x A bins
    bins = np.array([[2, 0, 1, 0], [1, 0, 1, 2]])  # env 0: a0 = +1, 0; env 1: a0 = 0, 0 and solves on step 2
    rewards, steps = [], []
    for _ in range(3):
        _, reward, terminated, truncated, info = envs.step(bins)
        rewards.append(reward)
        steps.append(info["chunk_steps"])
    assert np.array(steps).tolist() == [[2, 2], [2, 2], [1, 1]]
    assert terminated.all() and not truncated.any()
    # env 0's actions alternate +1, 0: the rewards 11, 20, 31, 40, 51 -> 153 over 5 env steps
    assert info["episode_return"] == pytest.approx([153.0, 150.0]) and info["episode_length"].tolist() == [5, 5]
    assert info["chunk_rewards"][0] == pytest.approx([51.0, 0.0])  # of the step itself, not the reset's
    assert np.array(rewards)[:, 0] == pytest.approx([31.0, 71.0, 51.0])
    assert info["_final_obs"].all() and float(info["final_obs"][0, 0]) == 5.0  # the episode's last observation


def test_the_structured_task_in_chunks_equals_the_same_actions_one_at_a_time():
    spec = StructuredTaskSpec(action_dims=3, num_bins=5, horizon=5, noise_std=0.0)
    one = StructuredTaskVectorEnv(spec, 4, seed=3)
    chunked = ChunkedVectorEnv(StructuredTaskVectorEnv(spec, 4, seed=3), chunk_size=2)
    one.reset(seed=7)
    chunked.reset(seed=7)
    rng = np.random.default_rng(0)
    for decision in range(3):  # 2 + 2 + 1 steps: the episode (horizon 5) ends inside the third chunk
        chunk = rng.integers(0, 5, (4, 2, 3))
        obs_c, reward_c, term_c, trunc_c, info_c = chunked.step(chunk.reshape(4, 6))
        total = np.zeros(4)
        for j in range(2 if decision < 2 else 1):
            obs_1, reward_1, term_1, trunc_1, info_1 = one.step(chunk[:, j])
            total += reward_1
        assert reward_c == pytest.approx(total)
        np.testing.assert_array_equal(term_c, term_1)
    assert info_c["chunk_steps"].tolist() == [1, 1, 1, 1]
    assert info_c["episode_return"] == pytest.approx(info_1["episode_return"])
    assert info_c["episode_length"].tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(obs_c, obs_1)  # the next episode's first observation
    np.testing.assert_array_equal(info_c["final_obs"], info_1["final_obs"])


def test_chunks_need_same_step_autoreset():
    spec = StructuredTaskSpec(action_dims=2, num_bins=3, horizon=3)
    env = StructuredTaskVectorEnv(spec, 2, autoreset_mode="next_step")
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match="same step"):
        ChunkedVectorEnv(env, 2)


def test_gae_over_decisions_on_a_hand_table():
    """Two envs, three decisions of chunks of H = 3, gamma 0.9, lambda 0.8.

    env 0: decisions of 3, 2 (terminated inside the chunk), 3 steps; env 1: 3, 3, 1 (time limit inside the chunk).
    """
    g, lam = 0.9, 0.8
    step_rewards = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]],
                                 [[4.0, 5.0, 0.0], [1.0, 1.0, 1.0]],
                                 [[1.0, 0.0, 2.0], [2.0, 0.0, 0.0]]])  # [T, N, H]
    steps = torch.tensor([[3, 3], [2, 3], [3, 1]])
    rewards = chunk_return(step_rewards, g)  # [T, N]
    # r = r0 + g r1 + g^2 r2
    expected = [[1 + 2 * 0.9 + 3 * 0.81, 0.81], [4 + 5 * 0.9, 1 + 0.9 + 0.81], [1 + 2 * 0.81, 2.0]]
    np.testing.assert_allclose(rewards.numpy(), expected, rtol=1e-6)
    values = torch.tensor([[0.5, 1.0], [2.0, 1.5], [0.2, 0.7]])
    next_value = torch.tensor([0.3, 0.6])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, False], [False, True]])
    final_values = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 9.0]])  # V(final obs) of env 1's truncated episode
    adv, ret = compute_gae(rewards, values, next_value, terminated, truncated, gamma=g, gae_lambda=lam,
                           final_values=final_values, steps=steps)
    r = rewards.tolist()
    # env 0: the last decision bootstraps V(s_T) = 0.3 over 3 steps; the second one ends the episode (no bootstrap,
    # no lambda-link to the third, which belongs to the next episode)
    a0_2 = r[2][0] + g**3 * 0.3 - 0.2
    a0_1 = r[1][0] + 0.0 - 2.0
    a0_0 = (r[0][0] + g**3 * 2.0 - 0.5) + g**3 * lam * a0_1
    # env 1: the last decision is truncated after 1 step: bootstrap V(final obs) = 9.0 over 1 step, no link beyond
    a1_2 = r[2][1] + g**1 * 9.0 - 0.7
    a1_1 = (r[1][1] + g**3 * 0.7 - 1.5) + g**3 * lam * a1_2
    a1_0 = (r[0][1] + g**3 * 1.5 - 1.0) + g**3 * lam * a1_1
    np.testing.assert_allclose(adv.numpy(), [[a0_0, a1_0], [a0_1, a1_1], [a0_2, a1_2]], rtol=1e-6)
    np.testing.assert_allclose(ret.numpy(), (adv + values).numpy(), rtol=1e-6)


def test_one_step_chunks_are_plain_gae():
    torch.manual_seed(0)
    T, N = 5, 3
    rewards, values = torch.randn(T, N), torch.randn(T, N)
    nxt = torch.randn(N)
    term = torch.rand(T, N) < 0.2
    plain = compute_gae(rewards, values, nxt, term, torch.zeros_like(term), gamma=0.97, gae_lambda=0.9)
    ones = compute_gae(rewards, values, nxt, term, torch.zeros_like(term), gamma=0.97, gae_lambda=0.9,
                       steps=torch.ones(T, N, dtype=torch.long))
    for a, b in zip(plain, ones):
        torch.testing.assert_close(a, b)


def test_sft_chunk_targets_on_a_hand_table():
    """Two episodes (3 and 2 steps) of 1-dim actions, chunks of 2: the target of step t is actions t, t+1 of its own
    episode; past the end the last action repeats (``repeat``) or the step gives no sample (``drop``)."""
    from vla_structppo.data.chunks import chunk_targets

    actions = np.array([[1.0], [2.0], [3.0], [10.0], [20.0]])
    episodes = np.array([5, 5, 5, 8, 8])
    targets, rows = chunk_targets(actions, episodes, 2, "repeat")
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert targets[..., 0].tolist() == [[1, 2], [2, 3], [3, 3], [10, 20], [20, 20]]
    targets, rows = chunk_targets(actions, episodes, 2, "drop")
    assert rows.tolist() == [0, 1, 3] and targets[..., 0].tolist() == [[1, 2], [2, 3], [10, 20]]
    assert chunk_targets(actions, episodes, 1, "drop")[1].tolist() == [0, 1, 2, 3, 4]


def test_sft_clones_chunks_from_per_step_demos(tiny_llava, tmp_path):
    """Demos recorded one step at a time on a 4-step task; SFT with chunks of 2 decoded in parallel learns the
    2 x 7 token targets, and its checkpoint acts in chunks."""
    from helpers import QUIET

    from vla_structppo.cli import main
    from vla_structppo.config import load_config
    from vla_structppo.train.sft import sft

    common = [f"output_dir={tmp_path}", *QUIET, f"model.name_or_path={tiny_llava}", f"sft.dataset={tmp_path / 'demos'}",
              "env.structured.horizon=4", "sft.max_samples=64", "sft.num_epochs=30", "sft.learning_rate=3e-3"]
    main(["demos", "recipes/structured/vla_sft.yaml", *common])
    cfg = load_config("recipes/structured/vla_sft.yaml", [*common, "action.chunk_size=2", "action.decoding=parallel",
                                                           "name=chunked"])
    result = sft(cfg)
    first, final = result.history[0]["sft/token_accuracy"], result.final["sft/final_token_accuracy"]
    assert final > 0.6 and final > first + 0.4, (first, final)  # chance is 1/256 per token
    assert result.policy.action_dims == 14 and not result.policy.autoregressive
