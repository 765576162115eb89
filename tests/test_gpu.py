"""What needs a GPU: the VLA policy in bf16 on CUDA (OpenVLA and a transformers VLM), a short PPO run there,
and ``predict`` on the device. Skipped (visibly) on a machine without CUDA; run on one with
``python -m pytest -q -m gpu tests/test_gpu.py``. ``benchmarks/openvla_throughput.py --size 7b`` measures
the released shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUIET, vla_policy

from vla_structppo.config import load_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gpu marker)")]
D, K = 7, 256


@pytest.fixture(scope="module")
def models(tiny_llava, tiny_openvla) -> dict[str, Path]:
    return {"llava": tiny_llava, "openvla": tiny_openvla}


def overrides(path: Path, *extra: str) -> list[str]:
    return ["policy.type=vla", f"model.name_or_path={path}", "env.observation=image", f"env.action_dims={D}",
            f"env.num_bins={K}", "device=cuda", *extra]


def observations(n: int) -> dict:
    from vla_structppo.envs import make_env

    cfg = load_config(None, overrides(Path("x"), "env.structured.horizon=3"))
    obs, _ = make_env(cfg.env, n, seed=0).reset(seed=0)
    return obs


@pytest.mark.parametrize("arch", ["llava", "openvla"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_cached_act_and_teacher_forced_update_agree_on_cuda(arch, dtype, tol, models):
    policy = vla_policy(load_config(None, overrides(models[arch], f"model.dtype={dtype}"))).cuda()
    inputs = policy.prepare(observations(6))
    with torch.no_grad():
        out = policy.act(inputs)
        ev = policy.evaluate(inputs, out.actions)
    assert out.actions.is_cuda and out.logp.dtype == torch.float32
    assert torch.allclose(ev.logp, out.logp, atol=tol)


def test_ppo_runs_on_cuda(models, tmp_path):
    from vla_structppo.train.ppo import train

    result = train(load_config(None, overrides(
        models["openvla"], "model.dtype=bfloat16", "env.structured.horizon=1", "env.structured.num_goals=1",
        "env.num_envs=8", "ppo.num_steps=2", "ppo.total_timesteps=32", "ppo.num_minibatches=2",
        f"output_dir={tmp_path}", "name=gpu", *QUIET)))
    assert len(result.history) == 2 and all(np.isfinite(r["losses/policy_loss"]) for r in result.history)
    assert result.history[0]["losses/first_minibatch_logp_dev"] < 5e-2


def test_predict_on_cuda_matches_cpu(models, tmp_path):
    from PIL import Image

    from vla_structppo.predict import predict

    image = tmp_path / "frame.png"
    Image.fromarray(np.arange(56 * 56 * 3, dtype=np.uint8).reshape(56, 56, 3)).save(image)
    cpu = predict(str(models["openvla"]), str(image), "pick up the block", ["device=cpu"])
    gpu = predict(str(models["openvla"]), str(image), "pick up the block", ["device=cuda"])
    assert cpu["token_ids"] == gpu["token_ids"]
    assert np.allclose(cpu["logprobs"], gpu["logprobs"], atol=1e-3)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-3), ("bfloat16", 0.1)])
def test_oft_parallel_decoding_on_cuda_matches_cpu(models, tmp_path, dtype, tol):
    """OpenVLA-OFT's chunk (8 x 7, one bidirectional forward) on the GPU: SDPA's CUDA kernels with the 4-D mask give
    the CPU's tokens and log-probs (float32), and the update recomputes the rollout's log-probs (bf16 too)."""
    from PIL import Image

    from vla_structppo.predict import predict

    image = tmp_path / "frame.png"
    Image.fromarray(np.arange(56 * 56 * 3, dtype=np.uint8).reshape(56, 56, 3)).save(image)
    oft = ["action.chunk_size=8", "action.decoding=parallel", f"model.dtype={dtype}"]
    cpu = predict(str(models["openvla"]), str(image), "pick up the block", ["device=cpu", *oft[:2]])
    gpu = predict(str(models["openvla"]), str(image), "pick up the block", ["device=cuda", *oft])
    assert len(gpu["token_ids"]) == 56 and np.shape(gpu["action"]) == (8, 7)
    if dtype == "float32":
        assert cpu["token_ids"] == gpu["token_ids"]
    assert np.allclose(cpu["logprobs"], gpu["logprobs"], atol=tol)
    policy = vla_policy(load_config(None, overrides(models["openvla"], f"model.dtype={dtype}", *oft[:2]))).cuda()
    inputs = policy.prepare(observations(6))
    with torch.no_grad():
        out = policy.act(inputs)
        ev = policy.evaluate(inputs, out.actions)
    assert torch.equal(ev.logp, out.logp)


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_chunked_parallel_training_runs_on_cuda(models, tmp_path, estimator):
    """PPO (counterfactual credit over the chunk's tokens) and GRPO on a chunked, parallel-decoded OpenVLA in bf16."""
    from vla_structppo.train.ppo import train

    extra = ["advantage.estimator=grpo", "advantage.group_size=4", "credit.mode=joint", "head.enabled=false"] \
        if estimator == "grpo" else ["credit.ratio=token"]
    result = train(load_config(None, overrides(
        models["openvla"], "model.dtype=bfloat16", "env.structured.horizon=4", "env.structured.num_goals=1",
        "env.num_envs=8", "ppo.num_steps=2", "ppo.total_timesteps=64", "ppo.num_minibatches=2",
        "action.chunk_size=2", "action.decoding=parallel", f"output_dir={tmp_path}", "name=gpu", *QUIET, *extra)))
    assert result.history and all(np.isfinite(r["losses/policy_loss"]) for r in result.history)
    assert result.history[0]["losses/first_minibatch_logp_dev"] < 5e-2
