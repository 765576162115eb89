"""LeRobot datasets in and out, against datasets written and read by LeRobot's own code (tests/fixtures/lerobot).

The fixtures hold, next to each dataset, what LeRobot's writer was given and what LeRobot's reader returns; this
reader must return the same frames (bit for bit, video included: both decode with FFmpeg's dav1d), actions,
tasks and episodes. LeRobot's own reader loading a dataset written here is checked by
``test_lerobots_reader_loads_what_we_write`` where a LeRobot venv is available (``LEROBOT_PYTHON``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from vla_structppo.config import load_config  # noqa: E402
from vla_structppo.data.demos import DemoDatasetError, load_demos, recording_of  # noqa: E402
from vla_structppo.data.lerobot import (  # noqa: E402
    LeRobotDatasetError,
    LeRobotSource,
    convert_lerobot,
)
from vla_structppo.data.lerobot_write import write_lerobot  # noqa: E402
from vla_structppo.data.sources import resolve_demos  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
NAMES = ["video_ds", "image_ds", "v21_ds", "v21_to_v30_ds"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_STRUCTPPO_CACHE", str(tmp_path / "cache"))


def _read_all(source: LeRobotSource) -> dict[str, np.ndarray]:
    eps = list(source.iter_episodes())
    return {"frames": np.concatenate([e["images"] for e in eps]), "action": np.concatenate([e["actions"] for e in eps]),
            "tasks": sum((e["tasks"] for e in eps), []),
            "episode_index": np.concatenate([[e["episode_index"]] * len(e["actions"]) for e in eps])}


@pytest.mark.parametrize("name", NAMES)
def test_reads_what_lerobots_reader_reads(name):
    src = LeRobotSource(FIXTURES / name)
    ours = _read_all(src)
    theirs = np.load(FIXTURES / f"{name}_lerobot_read.npz")
    written = np.load(FIXTURES / f"{name}_written.npz")
    assert src.image_key == "observation.images.front" and src.action_dims == 7
    np.testing.assert_array_equal(ours["frames"], theirs["frames"])  # bit for bit, video too
    np.testing.assert_array_equal(ours["action"], theirs["action"])
    np.testing.assert_array_equal(ours["action"], written["action"])
    np.testing.assert_array_equal(ours["episode_index"], theirs["episode_index"])
    assert ours["tasks"] == json.loads(str(theirs["tasks"]))
    if src.is_video:  # lossy codec: the decoded frames are close to what was written, and each is the right one
        err = np.abs(ours["frames"].astype(int) - written["frames"].astype(int))
        assert err.mean() < 8 and np.all(err.reshape(len(err), -1).mean(1) < 12)
    else:
        np.testing.assert_array_equal(ours["frames"], written["frames"])


def test_action_statistics_from_stats_json_else_computed(tmp_path):
    v30 = json.loads((FIXTURES / "video_ds" / "meta" / "stats.json").read_text())["action"]
    convert_lerobot(FIXTURES / "video_ds", tmp_path / "a")
    _, stats = load_demos(tmp_path / "a")
    np.testing.assert_allclose(stats.q01, v30["q01"])
    np.testing.assert_allclose(stats.q99, v30["q99"])
    assert stats.count == 19
    convert_lerobot(FIXTURES / "v21_ds", tmp_path / "b")  # v2.1 keeps no quantiles: computed from the actions
    ds, stats21 = load_demos(tmp_path / "b")
    actions = np.asarray(ds["action"], np.float64)
    np.testing.assert_allclose(stats21.q01, np.quantile(actions, 0.01, axis=0))
    assert json.loads((tmp_path / "b" / "source.json").read_text())["codebase_version"] == "v2.1"


def test_sft_dataset_may_name_a_lerobot_dir_converted_once(tmp_path):
    first = resolve_demos(str(FIXTURES / "image_ds"))
    assert first.is_relative_to(tmp_path / "cache")
    ds, _ = load_demos(first)
    assert len(ds) == 15 and set(ds["instruction"]) == {"pick up the red block", "open the drawer"}
    mtime = (first / "dataset_info.json").stat().st_mtime
    assert resolve_demos(str(FIXTURES / "image_ds")) == first and (first / "dataset_info.json").stat().st_mtime == mtime
    other = resolve_demos(str(FIXTURES / "image_ds"), action_key="observation.state")  # other keys, other cache
    assert other != first and np.asarray(load_demos(other)[0]["action"]).shape == (15, 5)


def test_streams_one_episode_at_a_time(monkeypatch):
    """Conversion holds one episode in memory: the data parquet is read in record batches and each episode is
    yielded (and decoded) before the next one's rows are read."""
    src = LeRobotSource(FIXTURES / "video_ds")
    seen = []
    real = src._data_batches

    def batches():
        for b in real():
            seen.append(("batch", len(b["episode_index"])))
            yield b

    monkeypatch.setattr(src, "_data_batches", batches)
    for ep in src.iter_episodes():
        seen.append(("episode", ep["episode_index"]))
    assert [s for s in seen if s[0] == "episode"] == [("episode", 0), ("episode", 1), ("episode", 2)]


# -- out ------------------------------------------------------------------------------------------------------
def test_demos_written_as_lerobot_read_back_exactly_with_the_recording(tmp_path):
    from vla_structppo.data.record import structured_demos

    cfg = load_config(None, ["policy.type=vla", "model.name_or_path=unused", "env.observation=image",
                             "env.action_dims=7", "env.num_bins=11",
                             "env.structured.horizon=3", "env.structured.num_goals=4"])
    ds = structured_demos(cfg.env, 30, seed=0)
    write_lerobot(ds, tmp_path / "lr", fps=5, recording=recording_of(cfg))
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 30 and info["fps"] == 5
    src = LeRobotSource(tmp_path / "lr")
    back = _read_all(src)
    np.testing.assert_array_equal(back["frames"], np.stack([np.asarray(im) for im in ds["image"]]))
    np.testing.assert_array_equal(back["action"], np.asarray(ds["action"], np.float32))
    assert back["tasks"] == list(ds["instruction"])
    stats = json.loads((tmp_path / "lr" / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(np.asarray(ds["action"], np.float32), 0.99, axis=0),
                               rtol=1e-6)
    convert_lerobot(tmp_path / "lr", tmp_path / "ours")  # the recording survives the round trip
    assert json.loads((tmp_path / "ours" / "recording.json").read_text()) == json.loads(json.dumps(recording_of(cfg)))
    with pytest.raises(LeRobotDatasetError, match="already exists"):
        write_lerobot(ds, tmp_path / "lr")


@pytest.mark.skipif(not os.environ.get("LEROBOT_PYTHON"), reason="set LEROBOT_PYTHON to a python with lerobot")
def test_lerobots_reader_loads_what_we_write(tmp_path):
    from vla_structppo.data.record import structured_demos

    cfg = load_config(None, ["policy.type=vla", "model.name_or_path=unused", "env.observation=image",
                             "env.structured.num_goals=4"])
    ds = structured_demos(cfg.env, 20, seed=0)
    write_lerobot(ds, tmp_path / "lr", recording=recording_of(cfg))
    script = Path(__file__).parents[1] / "benchmarks" / "lerobot" / "read_with_lerobot.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([os.environ["LEROBOT_PYTHON"], str(script), str(tmp_path / "lr"), str(tmp_path / "out.npz")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz", allow_pickle=True)
    np.testing.assert_array_equal(theirs["observation.image"], np.stack([np.asarray(im) for im in ds["image"]]))
    np.testing.assert_array_equal(theirs["action"], np.asarray(ds["action"], np.float32))
    assert [str(t) for t in theirs["task"]] == list(ds["instruction"])


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_lerobot_inputs_name_the_fix(tmp_path, monkeypatch):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(DemoDatasetError, match=r"neither a demonstration dataset of this project \(.*\) nor a LeRobot"):
        load_demos(resolve_demos(str(tmp_path / "plain")))
    with pytest.raises(LeRobotDatasetError, match=r"its cameras: \['observation.images.front'\]"):
        LeRobotSource(FIXTURES / "video_ds", image_key="observation.images.wrist")
    with pytest.raises(LeRobotDatasetError, match=r"those it has: \['observation.state', 'action'\]"):
        LeRobotSource(FIXTURES / "video_ds", action_key="actions")
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "video_ds", old)
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(LeRobotDatasetError, match=r"codebase v1.6; this reader takes \['v3.0', 'v2.1'\]"):
        LeRobotSource(old)
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "video_ds", broken)
    mp4 = broken / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4"
    mp4.write_bytes(mp4.read_bytes()[: len(mp4.read_bytes()) // 2])  # a cut-off download
    with pytest.raises(LeRobotDatasetError, match=r"episode \d: .*file-000.mp4"):
        convert_lerobot(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()  # nothing written
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LeRobotDatasetError, match="huggingface-cli download --repo-type dataset lerobot/pusht"):
        resolve_demos("lerobot/pusht")


def test_an_action_width_other_than_the_envs_is_refused_before_training(tmp_path):
    from vla_structppo.train.sft import sft

    cfg = load_config(None, ["policy.type=vla", "model.name_or_path=unused", "env.observation=image",
                             "env.action_dims=4", f"sft.dataset={FIXTURES / 'image_ds'}", f"output_dir={tmp_path}"])
    with pytest.raises(DemoDatasetError, match="actions of width 7 but env.action_dims=4"):
        sft(cfg)
    assert not (tmp_path / "run").exists()
