"""Experiment trackers through Accelerate: ``logging.report_to`` (TRL's name) — TensorBoard, Weights & Biases,
trackio, MLflow.

Every tracker gets the same scalars (``accelerator.log``), the resolved config as hyper-parameters (flattened to
``section.key`` scalars) and the credit plots as images. ``logging.offline`` keeps everything on disk: W&B in
offline mode under ``<run>/wandb`` (``wandb sync`` uploads it later), MLflow in a file store ``<run>/mlruns``;
trackio is local by design and TensorBoard writes ``<run>/tb``. A tracker asked for by name that is not
installed fails before the run starts, naming the package; ``all`` means every installed one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TRACKERS, ConfigError, TrainConfig

__all__ = ["TRACKER_PACKAGES", "log_image", "report_to", "start_trackers", "tracker_hparams"]

# tracker name -> the module that must import (and the pip package that provides it)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                    "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}
assert tuple(TRACKER_PACKAGES) == TRACKERS


def _installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKER_PACKAGES[name][0]) is not None


def report_to(cfg: TrainConfig) -> list[str]:
    """The trackers of ``cfg.logging.report_to`` (``all``: every installed one; ``none``: none), each checked to
    be installed — a missing one fails here, before anything loads."""
    names = list(cfg.logging.report_to)
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return [n for n in TRACKERS if _installed(n)]
    missing = [n for n in names if not _installed(n)]
    if missing:
        pkgs = " ".join(TRACKER_PACKAGES[n][1] for n in missing)
        raise ConfigError(f"logging.report_to names {missing}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed: pip install {pkgs} (or drop {'it' if len(missing) == 1 else 'them'} from "
                          f"logging.report_to; installed trackers: {[n for n in TRACKERS if _installed(n)]})")
    return names


def tracker_hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as ``section.key -> scalar`` (lists and None as strings: trackers take scalars)."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f"{prefix}{f.name}.")
            return
        key = prefix[:-1]
        out[key] = obj if isinstance(obj, (bool, int, float, str)) else str(obj)

    walk(cfg, "")
    return out


def start_trackers(accelerator: Any, cfg: TrainConfig, kind: str) -> None:
    """``accelerator.init_trackers`` with the run's hyper-parameters and each tracker's local / offline settings
    (``make_accelerator`` passed ``report_to(cfg)`` as ``log_with``). ``kind`` (``ppo`` / ``sft``) tags the run.

    Called once the run is known to start: nothing is written into the run dir before."""
    names = report_to(cfg)
    if not names or not accelerator.is_main_process:
        return
    run_dir = str(cfg.run_dir)
    if "tensorboard" in names:  # always <run>/tb, whatever the project is called in the other trackers
        from accelerate.tracking import TensorBoardTracker

        accelerator.log_with = [TensorBoardTracker("tb", run_dir) if str(t) == "tensorboard" else t
                                for t in accelerator.log_with]
    init: dict[str, dict[str, Any]] = {}
    if "wandb" in names:
        init["wandb"] = {"name": cfg.name, "dir": run_dir, "tags": [kind]}
        if cfg.logging.offline:
            init["wandb"]["mode"] = "offline"
    if "mlflow" in names:
        init["mlflow"] = {"run_name": cfg.name, "tags": {"kind": kind}}
        if cfg.logging.offline and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            # a file store in the run dir (MLflow's default is a database in the working directory, which
            # mlflow-skinny cannot open); MLflow 3 asks for this switch to keep using file stores
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(Path(run_dir, "mlruns").resolve().as_uri())
    if "trackio" in names:
        init["trackio"] = {"name": cfg.name}
    accelerator.init_trackers(cfg.logging.project, config=tracker_hparams(cfg), init_kwargs=init)


def log_image(accelerator: Any, cfg: TrainConfig, key: str, image: np.ndarray, step: int) -> None:
    """An ``[H, W, 3]`` uint8 picture (a credit plot) to every tracker that takes images."""
    if not accelerator.is_main_process:
        return
    for name in report_to(cfg):
        tracker = accelerator.get_tracker(name, unwrap=False)
        if name == "tensorboard":
            tracker.log_images({key: image}, step=step, dataformats="HWC")
        elif name == "wandb":
            import wandb

            tracker.log_images({key: [wandb.Image(image)]}, step=step)
        elif name == "mlflow":
            import mlflow

            mlflow.log_image(image, f"{key.replace('/', '_')}_{step:06d}.png")
        elif name == "trackio":
            import trackio

            tracker.log({key: trackio.Image(image)}, step=step)
