"""Two processes on CPU through `accelerate launch` (gloo): parameters stay identical, learning happens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_stay_in_sync_and_learn(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    # note: `--cpu --num_processes 2` silently runs ONE process; --multi_gpu + a CPU Accelerator runs two
    cmd = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(WORKER),
           str(tmp_path), f"output_dir={tmp_path}", "name=ddp", "device=cpu", *QUIET, "env.num_envs=32",
           "env.structured.num_goals=4", "ppo.num_steps=4", "ppo.total_timesteps=3072", "ppo.num_minibatches=2",
           "head.fit_epochs=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "params_rank0.safetensors"))
    b = load_file(str(tmp_path / "params_rank1.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    curve = torch.load(tmp_path / "curve.pt")
    assert curve[0] < 0.0 and sum(curve[-3:]) / 3 > curve[0] + 0.5, curve
    # both ranks really ran: each stepped half the envs (16 per rank x 4 steps per update)
    assert (tmp_path / "ddp" / "checkpoints" / "last" / "rank_1.pt").is_file()


def test_module_entry_point_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vla_structppo", "train", f"output_dir={tmp_path}", "name=m",
                          "logging.progress_bar=false", "logging.tensorboard=false", "ppo.total_timesteps=256",
                          "env.num_envs=16", "ppo.num_steps=4"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done:" in out.stdout and (tmp_path / "m" / "checkpoints" / "last").exists()


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_train_a_vla_in_sync(tmp_path, tiny_llava):
    """DDP over a peft-wrapped VLM: the adapter and heads stay identical on both ranks."""
    model = tiny_llava
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518", str(WORKER),
           str(tmp_path), f"output_dir={tmp_path}", "name=ddp-vla", "device=cpu", *QUIET, "policy.type=vla",
           f"model.name_or_path={model}", "env.observation=image", "env.action_dims=7", "env.num_bins=256",
           "env.num_envs=8", "env.structured.num_goals=1",
           "ppo.num_steps=2", "ppo.total_timesteps=48", "ppo.num_minibatches=2", "ppo.learning_rate=1e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "params_rank0.safetensors"))
    b = load_file(str(tmp_path / "params_rank1.safetensors"))
    lora = [k for k in a if "lora_B" in k]
    assert lora and any(a[k].abs().sum() > 0 for k in lora)  # the adapter trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "ddp-vla" / "checkpoints" / "last" / "rank_1.pt").is_file()


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_run_grpo_with_uneven_batches_in_sync(tmp_path):
    """GRPO's batches differ in size between processes (each keeps its own groups: on a 2-dim, 3-bin bandit some
    members of some groups hit the goal). Every process still takes as many micro-batch steps --
    some on empty parts, some updates with nothing kept at all on one rank -- and the parameters stay identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519", str(WORKER),
           str(tmp_path), f"output_dir={tmp_path}", "name=ddp-grpo", "device=cpu", *QUIET, "env.num_envs=16",
           "env.action_dims=2", "env.num_bins=3",
           "advantage.estimator=grpo", "advantage.group_size=4", "rollout.filter_groups=[0.1,0.9]",
           "ppo.total_timesteps=480", "ppo.num_minibatches=3", "ppo.gradient_accumulation_steps=2",
           "head.fit_epochs=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "params_rank0.safetensors"))
    b = load_file(str(tmp_path / "params_rank1.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    kept = list(zip(*(torch.load(tmp_path / f"groups_kept_rank{r}.pt") for r in (0, 1)), strict=True))
    assert len(kept) == 30, kept
    # the cases this test is for (of 2 groups per process): an update where one process kept nothing and the other
    # something (the no-weight row), and one where neither kept any (the update is skipped everywhere)
    assert any(min(k) == 0 and max(k) > 0 for k in kept), kept
    assert any(max(k) == 0 for k in kept), kept
    assert sum(map(sum, kept)) > 0, kept
