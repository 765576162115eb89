"""Read a LeRobot dataset directory with LeRobot's own reader and dump every frame.

Usage:  HF_HUB_OFFLINE=1 venv/bin/python read_with_lerobot.py DIR OUT.npz [--backend torchcodec|pyav]

OUT.npz keys:
  <camera key>        uint8 [N,H,W,C]   (LeRobot returns float32 CHW in [0,1]; converted with round(x*255))
  action, observation.state (if present)    float32 [N,D]
  episode_index, frame_index, index, task_index   int64 [N]
  timestamp           float32 [N]
  task                str [N]
  stats_json, info_json   0-d str arrays: json.dumps(meta.stats) / json.dumps(meta.info)
  tasks_json          0-d str: {task: task_index}
  episodes_json       0-d str: meta.episodes (non-stats columns) as list of dicts
  video_backend       0-d str: the decoder backend LeRobot used
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def _to_jsonable(x):
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--backend", default=None, help="video backend (default: LeRobot's own choice)")
    args = p.parse_args()

    root = Path(args.dir).resolve()
    # repo_id is only a label when root holds the dataset: nothing is downloaded while meta/ and data/
    # (and videos/) are present. HF_HUB_OFFLINE=1 makes sure of it.
    ds = LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend=args.backend)
    print(f"{root}: {len(ds)} frames, {ds.num_episodes} episodes, backend={ds.video_backend}")

    cams = ds.meta.camera_keys
    cols: dict[str, list] = {}
    for i in range(len(ds)):
        item = ds[i]
        for k, v in item.items():
            cols.setdefault(k, []).append(v)

    out = {}
    for k, vals in cols.items():
        if k in cams:
            f32 = torch.stack(vals).float()  # [N,C,H,W] in [0,1]
            u8 = (f32 * 255).round().clamp(0, 255).to(torch.uint8)
            # LeRobot's float is exactly uint8/255 (both backends, and images): the uint8 form is lossless.
            assert torch.equal(u8.float() / 255.0, f32), "camera floats are not k/255"
            out[k] = u8.permute(0, 2, 3, 1).numpy()
        elif k == "task":
            out[k] = np.array(vals)
        elif isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals).numpy()
        else:
            out[k] = np.array(vals)

    out["stats_json"] = np.array(json.dumps(_to_jsonable(ds.meta.stats)))
    out["info_json"] = np.array(json.dumps(_to_jsonable(ds.meta.info)))
    tasks = ds.meta.tasks
    if isinstance(tasks, dict):  # lerobot 0.3.x (v2.1): {task_index: task}
        out["tasks_json"] = np.array(json.dumps({t: int(i) for i, t in tasks.items()}))
    else:  # lerobot 0.4.x (v3.0): DataFrame indexed by task with a task_index column
        out["tasks_json"] = np.array(json.dumps({t: int(r.task_index) for t, r in tasks.iterrows()}))
    eps = ds.meta.episodes  # v2.1: dict {episode_index: row}; v3.0: datasets.Dataset (stats/ columns dropped)
    rows = [eps[i] for i in (sorted(eps) if isinstance(eps, dict) else range(len(eps)))]
    out["episodes_json"] = np.array(json.dumps(_to_jsonable(rows)))
    out["video_backend"] = np.array(ds.video_backend)
    np.savez_compressed(args.out, **out)
    print("keys:", {k: (v.dtype.str, v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
