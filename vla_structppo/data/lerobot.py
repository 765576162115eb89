"""LeRobot datasets in and out: read codebase v3.0 (and v2.1), write v3.0 — no ``lerobot`` package needed.

Reading (``sft.dataset`` may name a LeRobot dataset dir or its Hub id): the camera ``sft.image_key`` (default: the
first camera feature of ``meta/info.json``) and the action ``sft.action_key`` (default ``action``) of every frame,
the frame's ``task`` as the instruction. Video frames are decoded with PyAV at the exact timestamps LeRobot
uses — frame ``t`` of an episode is the one at ``from_timestamp + timestamp`` in the camera's mp4 (v3.0 packs
many episodes per file; v2.1 has one file per episode) and must lie within 1e-4 s of it, as LeRobot checks.
Image (non-video) features are PNG bytes in the data parquet. Episodes stream one at a time into a
demonstration dataset on disk (:func:`convert_lerobot`), so a dataset larger than memory converts; ``load_demos``
caches the conversion. Action statistics come from ``meta/stats.json`` (q01 / q99 when present, as v3.0 writes
them) and are computed from the actions otherwise (v2.1 keeps no quantiles).

Writing (lerobot_write.py, ``vla-structppo demos`` with ``demos.format: lerobot``): a v3.0 dataset with the
picture as an ``image`` feature (lossless PNG, what LeRobot's reader and visualiser read), the action, the
five default columns, tasks, episodes and stats (q01 … q99 exact), and this project's recording metadata in
``meta/vla_structppo.json`` (LeRobot ignores files it does not know).

The layout follows what lerobot 0.4.4 writes and reads (checked against datasets written by LeRobot's own
writer, ``tests/fixtures/lerobot/``; docs/data.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .demos import DemoDatasetError

__all__ = ["DEFAULT_FEATURES", "OUR_META", "QUANTILES", "READ_VERSIONS", "WRITE_VERSION", "LeRobotDatasetError",
           "LeRobotSource", "cached_conversion", "convert_lerobot", "decode_video_frames", "is_lerobot_dataset",
           "locate_lerobot"]

READ_VERSIONS = ("v3.0", "v2.1")
WRITE_VERSION = "v3.0"
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's tolerance_s
OUR_META = "meta/vla_structppo.json"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


class LeRobotDatasetError(DemoDatasetError):
    """A LeRobot dataset this reader cannot use; the message names the file, key or episode and the fix."""


def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def locate_lerobot(source: str, revision: str | None = None) -> Path:
    """A local LeRobot dataset dir, or a Hub dataset repo id downloaded into the Hugging Face cache."""
    p = Path(source).expanduser()
    if p.is_dir():
        if not is_lerobot_dataset(p):
            raise LeRobotDatasetError(f"{p} is not a LeRobot dataset (no meta/info.json) nor a demonstration "
                                      "dataset of this project; point sft.dataset at a LeRobot dataset dir "
                                      "(meta/info.json, data/, videos/) or a Hub id such as lerobot/pusht")
        return p
    from ..files import is_hub_repo_id

    if not is_hub_repo_id(source):
        raise LeRobotDatasetError(f"no dataset at {source!r}: give a local dir or a Hub dataset id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, repo_type="dataset", revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise LeRobotDatasetError(
            f"cannot fetch the Hub dataset {source!r} ({type(err).__name__}): the Hub is not reachable or the id "
            f"is wrong. On a machine with access: `huggingface-cli download --repo-type dataset {source} "
            f"--local-dir DIR`, then sft.dataset=DIR") from None


# -- reading -----------------------------------------------------------------------------------------
@dataclass
class _Episode:
    index: int
    length: int
    data_file: Path | None  # v2.1: its own parquet
    video: dict[str, tuple[Path, float]]  # camera -> (mp4, from_timestamp)


class LeRobotSource:
    """One LeRobot dataset on disk: its info, the chosen camera and action keys, its episodes and tasks."""

    def __init__(self, root: str | Path, image_key: str | None = None, action_key: str = "action") -> None:
        self.root = Path(root)
        info_file = self.root / "meta" / "info.json"
        try:
            self.info = json.loads(info_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LeRobotDatasetError(f"{info_file} cannot be read ({err}); is {self.root} a LeRobot dataset?") from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in READ_VERSIONS:
            raise LeRobotDatasetError(
                f"{self.root} is LeRobot codebase {self.version or '(none)'}; this reader takes {list(READ_VERSIONS)}. "
                "Convert it with LeRobot's converters (lerobot/datasets/v30/convert_dataset_v21_to_v30.py)")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        cameras = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        if not cameras:
            raise LeRobotDatasetError(f"{self.root} has no camera feature (dtype video or image); its features: "
                                      f"{list(self.features)}")
        if image_key is None:
            image_key = cameras[0]
        elif image_key not in cameras:
            raise LeRobotDatasetError(f"sft.image_key={image_key!r} is not a camera of {self.root}; its cameras: "
                                      f"{cameras}")
        vectors = [k for k, f in self.features.items() if k not in DEFAULT_FEATURES
                   and str(f.get("dtype", "")).startswith("float") and len(f.get("shape", [])) == 1]
        if action_key not in vectors:
            raise LeRobotDatasetError(f"sft.action_key={action_key!r} is not a float vector feature of {self.root}; "
                                      f"those it has: {vectors}")
        self.image_key, self.action_key, self.cameras = image_key, action_key, cameras
        self.is_video = self.features[image_key]["dtype"] == "video"
        self.action_dims = int(self.features[action_key]["shape"][0])
        self.tasks = self._tasks()
        self.episodes = self._episodes()

    # -- meta ---------------------------------------------------------------------------------------------
    def _tasks(self) -> dict[int, str]:
        if self.version == "v2.1":
            rows = [json.loads(line) for line in (self.root / "meta" / "tasks.jsonl").read_text().splitlines() if line]
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        import pyarrow.parquet as pq

        table = pq.read_table(self.root / "meta" / "tasks.parquet").to_pandas()
        # the task string is the pandas index (LeRobot reads it back positionally with .iloc[i].name)
        return {int(i): str(name) for name, i in zip(table.index, table["task_index"], strict=True)}

    def _episodes(self) -> list[_Episode]:
        video_keys = [self.image_key] if self.is_video else []
        if self.version == "v2.1":
            rows = [json.loads(line) for line in (self.root / "meta" / "episodes.jsonl").read_text().splitlines()
                    if line]
            chunks = int(self.info.get("chunks_size", 1000))
            out = []
            for r in sorted(rows, key=lambda r: int(r["episode_index"])):
                e = int(r["episode_index"])
                data = self.root / self.info["data_path"].format(episode_chunk=e // chunks, episode_index=e)
                video = {k: (self.root / self.info["video_path"].format(episode_chunk=e // chunks, video_key=k,
                                                                      episode_index=e), 0.0) for k in video_keys}
                out.append(_Episode(e, int(r["length"]), data, video))
            return out
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise LeRobotDatasetError(f"{self.root / 'meta' / 'episodes'} holds no episodes parquet")
        needed = ["episode_index", "length"]
        for k in video_keys:
            needed += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
        out = []
        for f in files:
            table = pq.read_table(f)
            missing = [c for c in needed if c not in table.column_names]
            if missing:
                raise LeRobotDatasetError(f"{f} lacks the columns {missing}")
            cols = {c: table.column(c).to_pylist() for c in needed}
            for i in range(table.num_rows):
                video = {k: (self.root / self.info["video_path"].format(
                    video_key=k, chunk_index=cols[f"videos/{k}/chunk_index"][i],
                    file_index=cols[f"videos/{k}/file_index"][i]), float(cols[f"videos/{k}/from_timestamp"][i]))
                    for k in video_keys}
                out.append(_Episode(int(cols["episode_index"][i]), int(cols["length"][i]), None, video))
        return sorted(out, key=lambda e: e.index)

    def fingerprint(self) -> str:
        """Changes with the dataset's files and the chosen keys (the conversion cache's key)."""
        h = hashlib.sha256(f"{self.image_key}|{self.action_key}|".encode())
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and ".cache" not in p.parts:
                st = p.stat()
                h.update(f"{p.relative_to(self.root)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
        return h.hexdigest()[:16]

    def action_stats(self) -> dict[str, list[float]] | None:
        """``meta/stats.json``'s statistics of the action when they include q01 / q99 (v3.0), else None."""
        file = self.root / "meta" / "stats.json"
        if not file.is_file():
            return None
        stats = json.loads(file.read_text()).get(self.action_key, {})
        if not all(k in stats for k in ("q01", "q99", "min", "max", "mean", "std")):
            return None
        return {k: [float(v) for v in np.ravel(stats[k])] for k in ("q01", "q99", "min", "max", "mean", "std")}

    # -- frames -------------------------------------------------------------------------------------------
    def _data_batches(self) -> Iterator[dict[str, Any]]:
        """Rows of the data parquet(s) in file order, a record batch at a time, as columns of numpy / lists."""
        import pyarrow.parquet as pq

        columns = [self.action_key, "episode_index", "frame_index", "timestamp", "task_index"]
        if not self.is_video:
            columns.append(self.image_key)
        files = ([e.data_file for e in self.episodes] if self.version == "v2.1"
                 else sorted((self.root / "data").glob("*/*.parquet")))
        for f in files:
            try:
                reader = pq.ParquetFile(f)
            except (OSError, ValueError) as err:
                raise LeRobotDatasetError(f"{f} cannot be read as parquet ({err})") from None
            missing = [c for c in columns if c not in reader.schema_arrow.names]
            if missing:
                raise LeRobotDatasetError(f"{f} lacks the columns {missing} (it has {reader.schema_arrow.names})")
            for batch in reader.iter_batches(columns=columns, batch_size=1024):
                yield {c: batch.column(c).to_pylist() for c in columns}

    def iter_episodes(self) -> Iterator[dict[str, Any]]:
        """Per episode, in order: ``episode_index``, ``images uint8 [T, H, W, 3]``, ``actions float32 [T, D]``,
        ``tasks [T]`` (one episode in memory at a time)."""
        by_index = {e.index: e for e in self.episodes}
        pending: dict[str, list] = {}
        current = None
        for batch in self._data_batches():
            for i, ep in enumerate(batch["episode_index"]):
                if ep != current and current is not None:
                    yield self._finish(by_index, current, pending)
                    pending = {}
                current = ep
                for k, v in batch.items():
                    pending.setdefault(k, []).append(v[i])
        if current is not None:
            yield self._finish(by_index, current, pending)

    def _finish(self, by_index: dict[int, _Episode], ep: int, rows: dict[str, list]) -> dict[str, Any]:
        order = np.argsort(rows["frame_index"], kind="stable")
        actions = np.asarray(rows[self.action_key], np.float32)[order]
        if actions.ndim != 2 or actions.shape[1] != self.action_dims:
            raise LeRobotDatasetError(f"episode {ep}: {self.action_key} has shape {actions.shape}, info.json says "
                                      f"[{self.action_dims}]")
        if ep not in by_index:
            raise LeRobotDatasetError(f"episode {ep} is in the data but not in the episodes metadata of {self.root}")
        if self.is_video:
            path, start = by_index[ep].video[self.image_key]
            stamps = [start + float(np.float32(t)) for t in np.asarray(rows["timestamp"])[order]]
            images = decode_video_frames(path, stamps, episode=ep)
        else:
            images = np.stack([_decode_image(rows[self.image_key][j], ep) for j in order])
        tasks = [self.tasks[int(t)] for t in np.asarray(rows["task_index"])[order]]
        return {"episode_index": int(ep), "images": images, "actions": actions, "tasks": tasks}


def _decode_image(cell: Any, episode: int) -> np.ndarray:
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise LeRobotDatasetError(f"episode {episode}: an image cell holds no bytes (only a path: {cell!r})")
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_video_frames(path: Path, timestamps: list[float], *, episode: int,
                        tolerance: float = TIMESTAMP_TOLERANCE_S) -> np.ndarray:
    """The frames of ``path`` at ``timestamps`` (seconds), ``uint8 [N, H, W, 3]``: each the decoded frame whose
    presentation time is nearest, which must be within ``tolerance`` (LeRobot's check)."""
    import av

    if not path.is_file():
        raise LeRobotDatasetError(f"episode {episode}: its video {path} is missing")
    wanted = np.asarray(timestamps, np.float64)
    found: dict[int, np.ndarray] = {}
    best = np.full(len(wanted), np.inf)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base = float(stream.time_base)
            container.seek(max(int((wanted.min() - 1.0) / base), 0), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts) * base
                if t > wanted.max() + tolerance:
                    break
                near = np.abs(wanted - t)
                hits = np.flatnonzero((near <= tolerance) & (near < best))
                if len(hits):
                    image = frame.to_ndarray(format="rgb24")
                    for j in hits:
                        found[int(j)], best[j] = image, near[j]
    except av.error.FFmpegError as err:
        raise LeRobotDatasetError(f"episode {episode}: the video {path} cannot be decoded ({err}); the file is "
                                  "damaged — download it again") from None
    missing = [float(wanted[j]) for j in range(len(wanted)) if j not in found]
    if missing:
        raise LeRobotDatasetError(f"episode {episode}: {path} has no frame within {tolerance}s of t={missing[:3]} "
                                  f"({len(missing)} of {len(wanted)} frames); the video is truncated or its timestamps "
                                  "do not match the episode metadata")
    return np.stack([found[j] for j in range(len(wanted))])


# -- into this project's demonstration format ----------------------------------------------------------
def convert_lerobot(source: str | Path, out: str | Path, *, image_key: str | None = None, action_key: str = "action",
                    revision: str | None = None) -> Path:
    """A LeRobot dataset (dir or Hub id) as a demonstration dataset at ``out`` (episode by episode; nothing
    is left at ``out`` when it fails)."""
    import datasets

    from .demos import RECORDING_FILE, STATS_FILE, ActionStats, save_demos

    src = LeRobotSource(locate_lerobot(str(source), revision), image_key, action_key)
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    features = datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                  "action": datasets.Sequence(datasets.Value("float32")),
                                  "episode_index": datasets.Value("int64"), "success": datasets.Value("bool")})
    try:
        ds = datasets.Dataset.from_generator(_rows, gen_kwargs={"source": src}, features=features,
                                             cache_dir=str(staging / "cache"))
        save_demos(ds, staging / "dataset")
        stats = src.action_stats()
        if stats is not None:  # LeRobot's own q01 / q99 (v3.0); computed from the actions otherwise
            file = staging / "dataset" / STATS_FILE
            merged = {**json.loads(file.read_text()), **stats}
            low, high = np.asarray(merged["q01"]), np.asarray(merged["q99"])
            same = high - low < 1e-8  # a constant dim: widen as quantile_bounds does (no division by ~0)
            merged["q01"], merged["q99"] = np.where(same, low - 1, low).tolist(), np.where(same, high + 1, high).tolist()
            file.write_text(json.dumps(ActionStats(**merged).to_dict(), indent=1) + "\n")
        ours = src.root / OUR_META
        if ours.is_file():  # written by this project: keep the recording it was made with
            recording = json.loads(ours.read_text()).get("recording")
            if recording:
                (staging / "dataset" / RECORDING_FILE).write_text(json.dumps(recording, indent=1, sort_keys=True) + "\n")
        (staging / "dataset" / "source.json").write_text(json.dumps(
            {"lerobot": str(source), "root": str(src.root), "codebase_version": src.version,
             "image_key": src.image_key, "action_key": src.action_key, "episodes": len(src.episodes)}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        (staging / "dataset").rename(out)
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        raise cause if isinstance(cause, LeRobotDatasetError) else err from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _rows(source: LeRobotSource) -> Iterator[dict[str, Any]]:
    for ep in source.iter_episodes():
        for image, action, task in zip(ep["images"], ep["actions"], ep["tasks"], strict=True):
            yield {"image": image, "instruction": task, "action": action.tolist(),
                   "episode_index": ep["episode_index"], "success": True}


def cached_conversion(source: str, *, image_key: str | None, action_key: str, revision: str | None = None) -> Path:
    """The demonstration dataset converted from a LeRobot ``source``, converted once per dataset and keys under
    ``$VLA_STRUCTPPO_CACHE`` (default ``~/.cache/vla_structppo/lerobot``)."""
    src = LeRobotSource(locate_lerobot(source, revision), image_key, action_key)
    root = Path(os.environ.get("VLA_STRUCTPPO_CACHE", Path.home() / ".cache" / "vla_structppo")) / "lerobot"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in src.root.name)
    out = root / f"{name}-{src.fingerprint()}"
    if not (out / "dataset_info.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        convert_lerobot(src.root, out, image_key=src.image_key, action_key=action_key)
    return out
