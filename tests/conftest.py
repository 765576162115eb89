import os

import pytest
import torch

# 2 shared cores: one thread per process keeps timings and results steady
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def quick_overrides(tmp_path):
    """A tiny, fast run in a temporary output dir."""
    return [f"output_dir={tmp_path}", "logging.progress_bar=false", "logging.tensorboard=false",
            "logging.plot_every=0", "env.num_envs=16", "ppo.num_steps=4", "ppo.total_timesteps=256",
            "env.structured.num_goals=4"]


def pytest_configure(config):
    config.addinivalue_line("markers", "sim: needs a simulator package (metaworld, ...); skipped where it is missing")
    config.addinivalue_line("markers", "hub: pulls from a local Hub mirror (olah); skipped where olah is missing")
