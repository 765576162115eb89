"""Action chunks on the VLA policy: parallel decoding the OpenVLA-OFT way (one forward, zeroed slots,
bidirectional attention) and autoregressive chunks; PPO on chunked policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import QUIET, vla_policy

from vla_structppo.config import load_config
from vla_structppo.policies import vla as vla_module


def _cfg(model, *extra):
    return load_config(None, ["policy.type=vla", f"model.name_or_path={model}", "env.observation=image",
                              "env.action_dims=7", "env.num_bins=256", *extra])


def _obs(n: int = 3, size: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    words = ["open the drawer", "push the red cube to the left of the bowl please", "go"]
    return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "instruction": np.array([words[i % 3] for i in range(n)])}


@pytest.fixture(scope="module")
def parallel(tiny_llava):
    torch.manual_seed(0)
    return vla_policy(_cfg(tiny_llava, "action.chunk_size=3", "action.decoding=parallel")).eval()


def test_one_forward_gives_every_token_of_the_chunk(parallel):
    inputs = parallel.prepare(_obs())
    assert parallel.action_dims == 21 and not parallel.autoregressive
    with torch.no_grad():
        out = parallel.act(inputs)
        ev = parallel.evaluate(inputs, out.actions)
    assert out.actions.shape == (3, 21) and out.bin_probs.shape == (3, 21, 256)
    torch.testing.assert_close(ev.logp, out.logp, rtol=0, atol=0)  # the update sees the rollout's distribution
    # the slots' embeddings are zeroed: the distribution does not depend on the actions the update passes in
    with torch.no_grad():
        other = parallel.evaluate(inputs, torch.randint(0, 256, (3, 21)))
    torch.testing.assert_close(other.bin_probs, ev.bin_probs, rtol=0, atol=0)


def test_the_value_bootstrap_reads_the_feature_act_gives(parallel):
    """encode (the bootstrap at a rollout's end and at truncations) = act's and evaluate's state feature: the value
    head must read the same thing everywhere (a causal prompt-only forward gave another feature, off by ~1)."""
    inputs = parallel.prepare(_obs())
    with torch.no_grad():
        out = parallel.act(inputs)
        ev = parallel.evaluate(inputs, out.actions)
        feature = parallel.encode(inputs)
    torch.testing.assert_close(feature, out.features, rtol=0, atol=0)
    torch.testing.assert_close(feature, ev.features, rtol=0, atol=0)


def test_padding_does_not_change_a_samples_distribution(parallel):
    obs = _obs()
    batch = parallel.prepare(obs)
    with torch.no_grad():
        together = parallel.evaluate(batch, torch.zeros(3, 21, dtype=torch.long)).logp
        for i in range(3):
            alone = parallel.prepare({k: v[i:i + 1] for k, v in obs.items()})
            single = parallel.evaluate(alone, torch.zeros(1, 21, dtype=torch.long)).logp
            torch.testing.assert_close(single, together[i:i + 1], rtol=0, atol=2e-5)


def test_the_attention_is_bidirectional_and_sdpa_equals_eager(tiny_llava, monkeypatch):
    obs, actions = _obs(), torch.zeros(3, 21, dtype=torch.long)
    logp = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        policy = vla_policy(_cfg(tiny_llava, "action.chunk_size=3", "action.decoding=parallel",
                                 f"model.attn_implementation={impl}")).eval()
        with torch.no_grad():
            logp[impl] = policy.evaluate(policy.prepare(obs), actions).logp
    torch.testing.assert_close(logp["sdpa"], logp["eager"], rtol=0, atol=1e-5)
    # the same forward with the model's own causal mask (the 2-D padding mask handed through) is another policy
    monkeypatch.setattr(vla_module, "bidirectional_mask", lambda config, mask, dtype: mask)
    with torch.no_grad():
        causal = policy.evaluate(policy.prepare(obs), actions).logp
    assert (causal - logp["eager"]).abs().max() > 0.1


def test_autoregressive_chunks_decode_every_token_with_the_cache(tiny_llava):
    torch.manual_seed(0)
    policy = vla_policy(_cfg(tiny_llava, "action.chunk_size=2")).eval()
    inputs = policy.prepare(_obs())
    assert policy.action_dims == 14 and policy.autoregressive
    with torch.no_grad():
        out = policy.act(inputs)
        ev = policy.evaluate(inputs, out.actions)
    torch.testing.assert_close(ev.logp, out.logp, rtol=0, atol=5e-5)


def test_parallel_decoding_is_refused_where_the_model_builds_its_own_mask(tmp_path):
    from vla_structppo.policies.vla_arch import UnsupportedArchitectureError
    from vla_structppo.testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

    model = save_tiny_vla("paligemma", tmp_path / "pg", seed=0)
    write_action_tokenizer(model, 7, 256)
    with pytest.raises(UnsupportedArchitectureError, match="action.decoding=parallel"):
        vla_policy(_cfg(model, "action.decoding=parallel"))


def test_ppo_on_a_chunked_parallel_vla(tiny_llava, tmp_path):
    """PPO on the structured task's image version with 2-step chunks decoded in parallel: the ratio is 1 at the
    first minibatch, every update runs, the head spans the chunk's 2 x 7 tokens and credit plots are written."""
    from vla_structppo.train.ppo import train

    cfg = load_config("recipes/structured/vla_ppo.yaml", [
        f"output_dir={tmp_path}", *QUIET[:2], f"model.name_or_path={tiny_llava}", "action.chunk_size=2",
        "action.decoding=parallel", "env.structured.horizon=4", "env.num_envs=4", "ppo.num_steps=4",
        "ppo.total_timesteps=64", "ppo.num_minibatches=2", "logging.plot_every=1", "credit.ratio=action"])
    result = train(cfg)
    assert len(result.history) == 2  # 64 env steps / (4 envs x 4 decisions x 2 steps)
    assert all(r["losses/first_minibatch_logp_dev"] < 1e-4 for r in result.history)
    assert result.final["charts/global_step"] == 64
    assert result.agent.adv_head.action_dims == 14
    assert (cfg.run_dir / "plots" / "credit_000002.png").is_file()
    # a run from this checkpoint with another chunk size is refused, naming the key
    from vla_structppo.checkpoints import CheckpointError

    other = load_config("recipes/structured/vla_ppo.yaml", [
        f"output_dir={tmp_path}", *QUIET[:2], "name=other", f"init_from={cfg.run_dir}", "action.chunk_size=3",
        f"model.name_or_path={tiny_llava}",
        "action.decoding=parallel", "env.structured.horizon=4", "env.num_envs=4", "ppo.num_steps=4"])
    with pytest.raises(CheckpointError, match="action.chunk_size=3 \\(checkpoint: 2\\)"):
        train(other)
