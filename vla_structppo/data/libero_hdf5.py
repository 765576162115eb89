"""LIBERO's own demonstrations (the benchmark's HDF5 files) as a demonstration dataset, with OpenVLA's
preprocessing.

A LIBERO file (``<task name>_demo.hdf5``, one per task; the released ones and OpenVLA's regenerated
``*_no_noops`` ones share the layout) holds ``data/demo_<i>`` groups with ``actions [T, 7]`` (OSC_POSE deltas in
[-1, 1], gripper -1 open / +1 close) and ``obs/<camera> [T, H, W, 3]`` uint8 pictures stored bottom row first;
``data.attrs["problem_info"]`` (JSON) carries the ``language_instruction``.

The conversion, as OpenVLA prepared LIBERO for training (``experiments/robot/libero/regenerate_libero_dataset.py``
and its RLDS builders):

* **no-op actions dropped**: a step whose arm action is ``‖a[:6]‖ < 1e-4`` and whose gripper equals the last
  *kept* action's (before anything is kept, the norm alone) — teleoperators pause, and a policy cloned on
  pauses learns to stand still;
* **pictures turned by 180°** (``[::-1, ::-1]``), the orientation OpenVLA trained on and ``envs/libero.py``
  renders;
* the instruction from ``problem_info`` (else the file name), one row per kept step, episodes numbered across
  files in order;
* ``gripper="openvla"``: the RLDS convention OpenVLA's LIBERO checkpoints act in, ``1 − clip(g, 0, 1)``
  (1 = open, 0 = close; ``env.libero.protocol: openvla`` maps it back); ``"raw"`` (default) keeps LIBERO's ±1.

Files are read one demo at a time and written in chunks, so a suite larger than memory converts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = ["GRIPPER_CONVENTIONS", "LiberoDataError", "convert_libero_hdf5", "drop_noops", "libero_files"]

GRIPPER_CONVENTIONS = ("raw", "openvla")
NOOP_THRESHOLD = 1e-4


class LiberoDataError(UserError, ValueError):
    """A LIBERO HDF5 file that is missing or not in the benchmark's layout; the message names it."""


def drop_noops(actions: np.ndarray) -> np.ndarray:
    """Indices of the steps OpenVLA keeps: not (``‖a[:-1]‖ < 1e-4`` and gripper == last kept gripper)."""
    keep: list[int] = []
    for t, a in enumerate(np.asarray(actions, np.float64)):
        still = np.linalg.norm(a[:-1]) < NOOP_THRESHOLD
        if still and (not keep or a[-1] == actions[keep[-1]][-1]):
            continue
        keep.append(t)
    return np.asarray(keep, dtype=np.int64)


def libero_files(path: str | Path) -> list[Path]:
    """``path`` itself (an ``.hdf5`` file) or the ``*.hdf5`` files of a suite dir, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.hdf5"))
        if files:
            return files
        raise LiberoDataError(f"{p} holds no .hdf5 files: point at a LIBERO suite dir (e.g. libero_spatial/ with "
                              "one <task>_demo.hdf5 per task) or one file")
    raise LiberoDataError(f"no LIBERO demonstrations at {str(p)!r} (a <task>_demo.hdf5 file or a suite dir)")


def _instruction(file: Any, path: Path) -> str:
    info = file["data"].attrs.get("problem_info")
    if info is not None:
        try:
            text = json.loads(info if isinstance(info, str) else info.decode()).get("language_instruction")
        except (ValueError, AttributeError):
            text = None
        if text:
            return str(text).strip()
    # the RLDS builders' rule: the file name without the scene prefix and the _demo suffix
    name = re.sub(r"_demo$", "", path.stem)
    name = re.sub(r"^([A-Z0-9]+_)+", "", name)
    return name.replace("_", " ")


def _demos(file: Any, path: Path) -> list[str]:
    if "data" not in file:
        raise LiberoDataError(f"{path} has no 'data' group: not a LIBERO demonstration file (expected "
                              "data/demo_<i>/actions and data/demo_<i>/obs/<camera>)")
    names = [k for k in file["data"] if re.fullmatch(r"demo_\d+", k)]
    if not names:
        raise LiberoDataError(f"{path}: 'data' holds no demo_<i> groups")
    return sorted(names, key=lambda k: int(k.split("_")[1]))  # demo_10 after demo_9


def _check_file(path: Path, camera: str, noops: str) -> int:
    """The layout, checked up front (headers and actions only) so a bad file fails before anything is written;
    returns how many steps will be kept."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise LiberoDataError(f"{path} cannot be read as HDF5 ({err}): a damaged or partial download?") from None
    kept = 0
    with file:
        for demo in _demos(file, path):
            group = file["data"][demo]
            if "actions" not in group or f"obs/{camera}" not in group:
                cams = sorted(group["obs"]) if "obs" in group else []
                raise LiberoDataError(f"{path}:{demo} lacks actions or obs/{camera} (cameras there: {cams}); "
                                      "set camera= to one of them")
            actions, images = group["actions"], group[f"obs/{camera}"]
            if len(actions.shape) != 2 or actions.shape[1] != 7 or images.shape[0] != actions.shape[0]:
                raise LiberoDataError(f"{path}:{demo}: actions {actions.shape} and {camera} {images.shape} do not "
                                      "form T steps of 7-d actions with one picture each")
            kept += len(drop_noops(np.asarray(actions))) if noops == "drop" else actions.shape[0]
    return kept


def _rows(files: tuple[Path, ...], camera: str, gripper: str, noops: str, stats: dict[str, Any]) -> Iterator[dict]:
    import h5py

    episode = 0
    for path in files:
        with h5py.File(path, "r") as file:  # checked by _check_file
            instruction = _instruction(file, path)
            for demo in _demos(file, path):
                group = file["data"][demo]
                actions = np.asarray(group["actions"], np.float64)
                images = group[f"obs/{camera}"]
                keep = drop_noops(actions) if noops == "drop" else np.arange(len(actions))
                stats["steps"] += len(actions)
                stats["kept"] += len(keep)
                stats["episodes"] += 1
                for t in keep:
                    a = actions[t].copy()
                    if gripper == "openvla":
                        a[-1] = 1.0 - np.clip(a[-1], 0.0, 1.0)
                    yield {"image": np.ascontiguousarray(np.asarray(images[t])[::-1, ::-1]),
                           "instruction": instruction, "action": a.astype(np.float32).tolist(),
                           "episode_index": episode, "success": True}
                episode += 1


def convert_libero_hdf5(source: str | Path, out: str | Path, *, camera: str = "agentview_rgb",
                        gripper: str = "raw", noops: str = "drop") -> dict[str, Any]:
    """Convert the LIBERO file(s) at ``source`` into a demonstration dataset at ``out`` (module doc); returns
    ``{"episodes", "steps", "kept", "files", "out"}``. Nothing is left at ``out`` if it fails."""
    import shutil

    import datasets

    from .demos import save_demos

    if gripper not in GRIPPER_CONVENTIONS:
        raise LiberoDataError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
    if noops not in ("drop", "keep"):
        raise LiberoDataError(f"noops must be 'drop' or 'keep', got {noops!r}")
    out = Path(out)
    if out.exists():
        raise LiberoDataError(f"{out} already exists: choose another out= (nothing was overwritten)")
    files = libero_files(source)
    if sum(_check_file(file, camera, noops) for file in files) == 0:
        raise LiberoDataError(f"{source}: every step was a no-op; nothing to learn from")
    stats: dict[str, Any] = {"episodes": 0, "steps": 0, "kept": 0}
    features = datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string"),
                                  "action": datasets.Sequence(datasets.Value("float32")),
                                  "episode_index": datasets.Value("int64"), "success": datasets.Value("bool")})
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        ds = datasets.Dataset.from_generator(
            # a tuple: datasets would shard a list across generator calls (restarting the episode count)
            _rows, gen_kwargs={"files": tuple(files), "camera": camera, "gripper": gripper, "noops": noops, "stats": stats},
            features=features, cache_dir=str(staging / "cache"), keep_in_memory=False)
        save_demos(ds, staging / "dataset")
        source_info = {"converted_from": [str(f) for f in files], "camera": camera, "gripper": gripper,
                       "noops": noops, **stats}
        (staging / "dataset" / "source.json").write_text(json.dumps(source_info, indent=1) + "\n")
        (staging / "dataset").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**stats, "files": len(files), "out": str(out)}
