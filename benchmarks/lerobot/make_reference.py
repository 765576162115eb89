"""Write tiny reference LeRobot datasets with LeRobot's own writer API.

Usage:  HF_HUB_OFFLINE=1 venv/bin/python make_reference.py [OUT_DIR=ref]      (lerobot 0.4.4, codebase v3.0)
        HF_HUB_OFFLINE=1 venv21/bin/python make_reference.py [OUT_DIR=ref]    (lerobot 0.3.3, codebase v2.1:
                                                   writes v21_ds/ and v21_image_ds/ instead)

Produces (under OUT_DIR):
  video_ds/                 camera stored as "video" (fps 10, 3 episodes of 6, 9, 4 frames)
  image_ds/                 camera stored as "image" (fps 10, 2 episodes of 6, 9 frames)
  <name>_expected.npz       exactly what was passed to add_frame
  <name>_expected.json      task strings (per frame and per episode) + the features dict
Everything is deterministic (no RNG).
"""

import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import CODEBASE_VERSION, LeRobotDataset

FPS = 10
H = W = 32
TASKS = ["pick up the red block", "open the drawer"]


def frame_image(ep: int, t: int) -> np.ndarray:
    """Deterministic 32x32 RGB uint8: smooth gradients (no wrap-around) that shift per frame/episode,
    plus an 8x8 square on even coordinates that moves with t (so 4:2:0 chroma blocks align with it)."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[..., 0] = 20 + 6 * x + 4 * t          # <= 20 + 186 + 32 = 238
    img[..., 1] = 20 + 6 * y + 10 * ep        # <= 20 + 186 + 20 = 226
    img[..., 2] = 60 + 60 * ep                # per-episode constant
    sx = 2 * ((1 + 2 * t + 3 * ep) % 12)      # even, 0..22
    sy = 2 * ((2 + t + 2 * ep) % 12)
    img[sy:sy + 8, sx:sx + 8] = (250, 240, 40)
    return img


def state_vec(ep: int, t: int) -> np.ndarray:
    return np.array([ep + 0.1 * t + 0.01 * d for d in range(5)], dtype=np.float32)


def action_vec(ep: int, t: int) -> np.ndarray:
    return np.array([-(ep + 1) * 0.5 + 0.05 * t - 0.125 * d for d in range(7)], dtype=np.float32)


def features(cam_dtype: str) -> dict:
    return {
        "observation.images.front": {
            "dtype": cam_dtype,
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {
            "dtype": "float32",
            "shape": (5,),
            "names": [f"s{i}" for i in range(5)],
        },
        "action": {
            "dtype": "float32",
            "shape": (7,),
            "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
        },
    }


def build(out: Path, name: str, cam_dtype: str, ep_lengths: list[int], ep_tasks: list[int]) -> None:
    root = out / name
    if root.exists():
        shutil.rmtree(root)
    feats = features(cam_dtype)
    ds = LeRobotDataset.create(
        repo_id=f"local/{name}",
        fps=FPS,
        features=feats,
        root=root,
        robot_type="tiny",
        use_videos=(cam_dtype == "video"),
        image_writer_processes=0,
        image_writer_threads=0,  # synchronous PNG writes
        # vcodec left at its default ("libsvtav1") on purpose: that is what real datasets use
    )
    frames, states, actions, ep_index, frame_index, task_per_frame = [], [], [], [], [], []
    for ep, (n, ti) in enumerate(zip(ep_lengths, ep_tasks, strict=True)):
        for t in range(n):
            img = frame_image(ep, t)
            s = state_vec(ep, t)
            a = action_vec(ep, t)
            frame = {
                "observation.images.front": img.copy(),
                "observation.state": s.copy(),
                "action": a.copy(),
            }
            if "task" in inspect.signature(ds.add_frame).parameters:  # lerobot 0.3.x (codebase v2.1)
                ds.add_frame(frame, task=TASKS[ti])
            else:  # lerobot 0.4.x (codebase v3.0): the task is a key of the frame
                ds.add_frame({**frame, "task": TASKS[ti]})
            frames.append(img)
            states.append(s)
            actions.append(a)
            ep_index.append(ep)
            frame_index.append(t)
            task_per_frame.append(TASKS[ti])
        ds.save_episode()
    if hasattr(ds, "finalize"):  # v3.0: closes the parquet writers (footers); v2.1 has none
        ds.finalize()

    np.savez_compressed(
        out / f"{name}_expected.npz",
        frames=np.stack(frames),
        states=np.stack(states),
        actions=np.stack(actions),
        episode_index=np.array(ep_index, dtype=np.int64),
        frame_index=np.array(frame_index, dtype=np.int64),
        timestamp=(np.array(frame_index, dtype=np.float32) / FPS),
    )
    with open(out / f"{name}_expected.json", "w") as f:
        json.dump(
            {
                "fps": FPS,
                "codebase_version_of_writer": CODEBASE_VERSION,
                "camera_dtype": cam_dtype,
                "episode_lengths": ep_lengths,
                "episode_tasks": [TASKS[ti] for ti in ep_tasks],
                "task_per_frame": task_per_frame,
                "features": {k: {**v, "shape": list(v["shape"])} for k, v in feats.items()},
            },
            f,
            indent=2,
        )
    print(f"wrote {root}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "ref")
    out.mkdir(parents=True, exist_ok=True)
    if CODEBASE_VERSION == "v2.1":  # lerobot 0.3.x
        build(out, "v21_ds", "video", [6, 9, 4], [0, 1, 0])
        build(out, "v21_image_ds", "image", [6, 9], [0, 1])
    else:
        build(out, "video_ds", "video", [6, 9, 4], [0, 1, 0])
        build(out, "image_ds", "image", [6, 9], [0, 1])


if __name__ == "__main__":
    main()
