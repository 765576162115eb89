"""``logging.report_to``: the same scalars, hyper-parameters and credit plots reach every tracker, offline."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vla_structppo.config import ConfigError, load_config

RECIPE = "recipes/structured/quickstart.yaml"
REPO = Path(__file__).resolve().parents[1]
SHORT = ["ppo.total_timesteps=2048", "logging.progress_bar=false", "logging.plot_every=2", "logging.offline=true"]


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of a W&B offline run file (a LevelDB-style log: 32 KiB blocks of
    ``crc32 | length | type`` fragments after a 7-byte header), parsed with wandb's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, block, parts, out = Path(path).read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += block - pos % block if pos % block else 0
            continue
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def tensorboard_scalars(tb_dir: Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    images: list[str] = []
    for events in sorted(glob.glob(str(tb_dir / "**" / "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(events, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        images += [f"{tag}@{e.step}" for tag in acc.Tags()["images"] for e in acc.Images(tag)]
    return scalars, images


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is in the dev extra")
def test_wandb_offline_and_tensorboard_receive_the_same_scalars(tmp_path, monkeypatch):
    from vla_structppo.train.ppo import train

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(load_config(RECIPE, [*SHORT, f"output_dir={tmp_path}", "name=run",
                                        "logging.report_to=[tensorboard,wandb]"]))
    run_dir = tmp_path / "run"
    records = wandb_records(run_dir)
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    tb, tb_images = tensorboard_scalars(run_dir / "tb")
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == len(jsonl) == len(result.history) == 8
    keys = [k for k, v in jsonl[0].items() if isinstance(v, float) and v == v]  # every finite scalar
    assert len(keys) > 30 and "credit/action_variance_share" in keys
    for row, wb in zip(jsonl, history, strict=True):
        step = int(row["charts/global_step"])
        assert wb["_step"] == step
        for key in keys:
            assert wb[key] == pytest.approx(row[key], rel=1e-12, abs=1e-12), key  # W&B keeps float64
            assert tb[key][step] == pytest.approx(row[key], rel=1e-6, abs=1e-6), key  # TensorBoard: float32
    # the resolved config as hyper-parameters, in both
    config = next(r.config for r in records if r.WhichOneof("record_type") == "config")
    wb_config = {item.key: json.loads(item.value_json) for item in config.update}
    assert wb_config["ppo.learning_rate"] == pytest.approx(0.003)
    assert wb_config["credit.mode"] == "counterfactual"
    (hparams,) = glob.glob(str(run_dir / "tb" / "*" / "hparams.yml"))
    assert "ppo.learning_rate: 0.003" in Path(hparams).read_text()
    # the credit plots as images, every plot_every updates
    assert sorted(tb_images) == sorted(f"credit/plot@{256 * u}" for u in (2, 4, 6, 8))
    wb_images = [h for h in history if "credit/plot/_type" in h]
    assert [h["_step"] for h in wb_images] == [256 * u for u in (2, 4, 6, 8)]
    assert all(h["credit/plot/_type"].startswith("images") for h in wb_images)
    assert len(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "images" / "credit" / "*.png"))) == 4
    assert not list(run_dir.glob("wandb/run-*"))  # offline: nothing was synced


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("trackio") is None,
                    reason="mlflow / trackio not installed (optional trackers)")
def test_mlflow_and_trackio_offline_in_the_run_dir_and_trackio_dir(tmp_path):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vla_structppo", "train", RECIPE, *SHORT, f"output_dir={tmp_path}", "name=run",
           "logging.report_to=[mlflow,trackio]"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (metric,) = glob.glob(str(tmp_path / "run" / "mlruns" / "*" / "*" / "metrics" / "losses" / "policy_loss"))
    assert len(Path(metric).read_text().splitlines()) == 8
    (params,) = glob.glob(str(tmp_path / "run" / "mlruns" / "*" / "*" / "params" / "credit.mode"))
    assert Path(params).read_text() == "counterfactual"
    assert glob.glob(str(tmp_path / "run" / "mlruns" / "*" / "*" / "artifacts" / "credit_plot_*.png"))
    (db,) = glob.glob(str(tmp_path / "trackio" / "*.db"))
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'")]
        text = " ".join(str(row) for t in tables for row in con.execute(f"select * from {t}"))  # noqa: S608
    assert "losses/policy_loss" in text and "rollout/normalized_return" in text


def test_report_to_names_what_is_wrong_before_anything_runs(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="logging.report_to entry.*comet"):
        load_config(None, ["logging.report_to=[comet]"])
    with pytest.raises(ConfigError, match="stand alone"):
        load_config(None, ["logging.report_to=[all,wandb]"])
    from vla_structppo.train import trackers
    from vla_structppo.train.accel import make_accelerator

    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install mlflow"):
        make_accelerator(load_config(None, ["logging.report_to=[tensorboard,mlflow]", f"output_dir={tmp_path}"]))
    assert "mlflow" not in trackers.report_to(load_config(None, ["logging.report_to=[all]"]))
    assert not (tmp_path / "run").exists()


def test_the_older_tensorboard_switch_still_works():
    assert load_config(None, ["logging.tensorboard=false"]).logging.report_to == ["none"]
    cfg = load_config(None, ["logging.report_to=[wandb]", "logging.tensorboard=true"])
    assert cfg.logging.report_to == ["tensorboard", "wandb"] and cfg.logging.tensorboard is None
    assert load_config(None, []).logging.report_to == ["tensorboard"]
