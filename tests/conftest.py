import hashlib
import os
from pathlib import Path

import pytest
import torch
from helpers import QUIET

# 2 shared cores: one thread per process keeps timings and results steady
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def quick_overrides(tmp_path):
    """A tiny, fast run in a temporary output dir."""
    return [f"output_dir={tmp_path}", *QUIET, "env.num_envs=16", "ppo.num_steps=4", "ppo.total_timesteps=256",
            "env.structured.num_goals=4"]


# -- tiny offline models, built once per session and shared: READ-ONLY -------------------------------------
# A test that changes a model's files works on a copy (shutil.copytree); each fixture checks at the end of the
# session that no test changed its files.
def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _shared(path: Path):
    before = _digest(path)
    yield path
    assert _digest(path) == before, f"a test changed the shared tiny model {path}: work on a copy"


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A tiny LLaVA VLA (seed 0, 32 px) with an action tokenizer of 7 dims x 256 bins on [-1, 1]."""
    from vla_structppo.testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

    path = save_tiny_vla("llava", tmp_path_factory.mktemp("tiny-llava") / "llava", seed=0)
    write_action_tokenizer(path, 7, 256)
    yield from _shared(path)


@pytest.fixture(scope="session")
def tiny_openvla(tmp_path_factory):
    """A tiny OpenVLA in the released layout (seed 0) for training tests: 56 px pictures (16 patches), one
    dataset's statistics (``bridge_orig``)."""
    from vla_structppo.testing.tiny_openvla import DEFAULT_NORM_STATS, save_tiny_openvla

    path = save_tiny_openvla(tmp_path_factory.mktemp("tiny-openvla") / "openvla", seed=0, image_size=56,
                             norm_stats={"bridge_orig": DEFAULT_NORM_STATS["bridge_orig"]})
    yield from _shared(path)


def pytest_configure(config):
    config.addinivalue_line("markers", "sim: needs a simulator package (metaworld, ...); skipped where it is missing")
    config.addinivalue_line("markers", "hub: pulls from a local Hub mirror (olah); skipped where olah is missing")
