"""Our demonstration datasets out as LeRobot v3.0 datasets (``demos.format: lerobot``): what LeRobot's own
tools read back (docs/data.md). Reading LeRobot datasets in is lerobot.py's."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .lerobot import DEFAULT_FEATURES, OUR_META, QUANTILES, WRITE_VERSION, LeRobotDatasetError

__all__ = ["write_lerobot"]


def _vector_stats(x: np.ndarray) -> dict[str, list]:
    x = np.asarray(x, np.float64)
    out = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
           "count": [int(len(x))]}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0).tolist()
    return out


def write_lerobot(ds: Any, out: str | Path, *, fps: float = 10.0, recording: dict | None = None,
                  image_key: str = "observation.image", robot_type: str = "vla_structppo") -> Path:
    """Our demonstration dataset ``ds`` (image, instruction, action, episode_index) as a LeRobot v3.0 dataset at
    ``out`` (written under a temporary name, then renamed). The picture is an ``image`` feature (PNG)."""
    out = Path(out)
    if out.exists():
        raise LeRobotDatasetError(f"{out} already exists (nothing was overwritten): choose another sft.dataset")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    layout = _EpisodeLayout.of(ds, fps)
    try:
        (staging / "data" / "chunk-000").mkdir(parents=True)
        (staging / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        image_stats, (H, W) = _write_frames(ds, layout, staging / "data" / "chunk-000" / "file-000.parquet", image_key)
        _write_meta(layout, staging, image_key, image_stats, (H, W), fps, robot_type)
        (staging / OUR_META).write_text(json.dumps({"recording": recording, "written_by": "vla_structppo"}, indent=1))
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@dataclass
class _EpisodeLayout:
    """Where our rows go in a LeRobot dataset: episodes numbered 0..E-1 and tasks in order of first appearance."""

    actions: np.ndarray  # [n, D] float32
    instructions: list[str]
    task_ids: dict[str, int]
    ep: np.ndarray  # [n] LeRobot episode index of each row
    starts: np.ndarray  # [E] first row of each episode
    frame: np.ndarray  # [n] frame index within its episode
    timestamps: np.ndarray  # [n] float32 seconds

    @classmethod
    def of(cls, ds: Any, fps: float) -> _EpisodeLayout:
        rows = ds.with_format("numpy")
        n = len(ds)
        episodes = np.asarray(rows["episode_index"], np.int64)
        if np.any(np.diff(episodes) < 0):
            raise LeRobotDatasetError("rows must be grouped by episode in order to be written as LeRobot episodes")
        instructions = [str(s) for s in rows["instruction"]]
        episode_ids = {e: i for i, e in enumerate(dict.fromkeys(episodes.tolist()))}
        task_ids = {t: i for i, t in enumerate(dict.fromkeys(instructions))}
        ep = np.array([episode_ids[e] for e in episodes], np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(ep)) + 1]
        frame = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        return cls(np.asarray(rows["action"], np.float32), instructions, task_ids, ep, starts, frame,
                   (frame / fps).astype(np.float32))

    @property
    def ends(self) -> np.ndarray:
        return np.r_[self.starts[1:], len(self.ep)]


def _write_frames(ds: Any, layout: _EpisodeLayout, path: Path, image_key: str
                  ) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The data parquet file (one row group per episode, pictures as PNG); returns the pixel statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    first = np.asarray(ds[0]["image"])
    H, W = first.shape[:2]
    n = len(layout.ep)
    schema = pa.schema([(image_key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("action", pa.list_(pa.float32(), layout.actions.shape[1])), ("timestamp", pa.float32()),
                        ("frame_index", pa.int64()), ("episode_index", pa.int64()), ("index", pa.int64()),
                        ("task_index", pa.int64())])
    pixel_sum, pixel_sq = np.zeros(3), np.zeros(3)
    pixel_min, pixel_max = np.full(3, 255.0), np.zeros(3)
    with pq.ParquetWriter(path, schema) as writer:
        for s, e in zip(layout.starts, layout.ends, strict=True):  # one row group per episode
            cells = []
            for j in range(s, e):
                img = np.asarray(ds[int(j)]["image"].convert("RGB"))
                if img.shape[:2] != (H, W):
                    raise LeRobotDatasetError(f"row {j}: picture {img.shape} differs from the first {first.shape}")
                flat = img.reshape(-1, 3).astype(np.float64) / 255.0
                pixel_sum += flat.sum(0)
                pixel_sq += (flat**2).sum(0)
                pixel_min, pixel_max = np.minimum(pixel_min, flat.min(0)), np.maximum(pixel_max, flat.max(0))
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                cells.append({"bytes": buf.getvalue(), "path": f"frame-{j:06d}.png"})
            batch = {image_key: cells, "action": layout.actions[s:e].tolist(), "timestamp": layout.timestamps[s:e],
                     "frame_index": layout.frame[s:e], "episode_index": layout.ep[s:e], "index": np.arange(s, e),
                     "task_index": [layout.task_ids[t] for t in layout.instructions[s:e]]}
            writer.write_table(pa.table(batch, schema=schema))
    mean = pixel_sum / (n * H * W)
    stats = {"min": pixel_min, "max": pixel_max, "mean": mean,
             "std": np.sqrt(np.maximum(pixel_sq / (n * H * W) - mean**2, 0.0))}
    return stats, (H, W)


def _write_meta(layout: _EpisodeLayout, staging: Path, image_key: str, image_stats: dict[str, np.ndarray],
                size: tuple[int, int], fps: float, robot_type: str) -> None:
    """``meta/``: the episodes table, the tasks, the statistics and ``info.json``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    starts, ends, instructions, task_ids = layout.starts, layout.ends, layout.instructions, layout.task_ids
    n, D, E = len(layout.ep), layout.actions.shape[1], len(starts)
    zeros = np.zeros(E, np.int64)
    pq.write_table(pa.table({
        "episode_index": np.arange(E, dtype=np.int64),
        "tasks": [sorted(set(instructions[s:e]), key=instructions[s:e].index) for s, e in zip(starts, ends, strict=True)],
        "length": (ends - starts).astype(np.int64), "data/chunk_index": zeros, "data/file_index": zeros,
        "dataset_from_index": starts.astype(np.int64), "dataset_to_index": ends.astype(np.int64),
        "meta/episodes/chunk_index": zeros, "meta/episodes/file_index": zeros}),
        staging / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    # the task string is the pandas index, rows in task_index order (how LeRobot reads it back)
    pd.DataFrame({"task_index": list(task_ids.values())}, index=list(task_ids)).to_parquet(
        staging / "meta" / "tasks.parquet")
    stats = {image_key: {k: v.reshape(3, 1, 1).tolist() for k, v in image_stats.items()} | {"count": [n]},
             "action": _vector_stats(layout.actions)}
    for key, values in (("timestamp", layout.timestamps), ("frame_index", layout.frame), ("episode_index", layout.ep),
                        ("index", np.arange(n)), ("task_index", [task_ids[t] for t in instructions])):
        stats[key] = _vector_stats(np.asarray(values)[:, None])
    (staging / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    H, W = size
    features = {
        image_key: {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [D], "names": [f"a{i}" for i in range(D)]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in DEFAULT_FEATURES[1:]},
    }
    info = {"codebase_version": WRITE_VERSION, "robot_type": robot_type, "total_episodes": int(E),
            "total_frames": int(n), "total_tasks": len(task_ids), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": int(fps) if float(fps).is_integer() else fps,
            "splits": {"train": f"0:{E}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
            "features": features}
    (staging / "meta" / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
