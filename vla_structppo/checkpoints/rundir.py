"""What a run directory guarantees, and the code that keeps it (docs/architecture.md#run-directory).

* A run dir that holds a run is never written by another one: starting a run under a name in use fails
  and says how to go on (``resume=`` to continue it, ``overwrite=true`` to replace it, another ``name=``).
* One writer at a time: a run holds an exclusive lock (``<run>/.lock``, ``fcntl.flock``, released by the OS
  when the process dies) for as long as it writes; a second one fails naming the first one's pid.
* Nothing is written into a run dir until the run is known to start (config checked, model loaded, envs
  made); ``overwrite=true`` deletes the old run only then, so a run that fails to start loses nothing.
* ``resume=`` continues in the run dir it resumes, with that run's settings; only settings that do not
  change what the checkpoint holds may differ (more steps, logging, evaluation).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig, apply_overrides
from ..errors import UserError
from .layout import CHECKPOINTS, CONFIG, METRICS
from .locate import read_config, resolve

__all__ = ["RESUMABLE_CHANGES", "RunDirError", "RunLock", "claim_run_dir", "config_to_resume", "resumed_config",
           "run_in_dir"]

LOCK = ".lock"
# settings a resumed run may change: they do not alter what the checkpoint holds or how a batch is built
RESUMABLE_CHANGES = ("ppo.total_timesteps", "ppo.target_kl", "ppo.max_nan_updates", "logging", "eval", "device",
                     "resume", "init_from", "name", "output_dir", "overwrite")


class RunDirError(UserError, FileExistsError):
    """A run dir that cannot be written as asked; the message says how to go on."""


def _holds_a_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir())


def _describe(run_dir: Path) -> str:
    ckpts = sorted(p.name for p in (run_dir / CHECKPOINTS).glob("[0-9]*")) if (run_dir / CHECKPOINTS).is_dir() else []
    lines = (run_dir / METRICS).read_text().count("\n") if (run_dir / METRICS).is_file() else 0
    what = f"checkpoints up to {ckpts[-1]}" if ckpts else "no checkpoint"
    return f"{what}, {lines} metrics lines"


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``; the OS drops it when the process ends, even on kill -9."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        # the outermost dir this lock creates (output_dir too, when it is new): removed again if the run
        # never starts, so a failed start leaves no trace
        self.created: Path | None = None
        for d in [run_dir, *run_dir.parents]:
            if d.exists():
                break
            self.created = d
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"cannot write the run dir {run_dir} ({err.strerror}): set output_dir= to a "
                              "writable directory") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunDirError(f"another process (pid {holder}) is writing to {run_dir}; wait for it to finish, or "
                              "choose another name=") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self, *, keep_empty: bool = True) -> None:
        """Unlock; a dir this lock created that holds nothing else is removed unless ``keep_empty``."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if not keep_empty and self.created is not None and not _holds_a_run(self.run_dir):
            (self.run_dir / LOCK).unlink(missing_ok=True)
            for d in [self.run_dir, *self.run_dir.parents]:  # the dirs it made, if they are still empty
                if d == self.created.parent or any(d.iterdir()):
                    break
                d.rmdir()


def claim_run_dir(cfg: TrainConfig) -> RunLock:
    """Lock ``cfg.run_dir`` for a new run (or for the run ``cfg.resume`` continues). A dir that already
    holds a run is refused unless resuming or ``overwrite`` (which takes effect in :func:`run_in_dir`)."""
    run_dir = cfg.run_dir
    lock = RunLock(run_dir)
    if not cfg.resume and not cfg.overwrite and _holds_a_run(run_dir):
        lock.release()
        raise RunDirError(
            f"{run_dir} already holds a run ({_describe(run_dir)}); nothing was changed. Continue it with "
            f"resume={run_dir}, replace it with overwrite=true, or start another with name=<new name>")
    return lock


def run_in_dir(cfg: TrainConfig, lock: RunLock) -> None:
    """The run is known to start: with ``overwrite``, the old run is deleted now (the lock stays)."""
    if cfg.overwrite and not cfg.resume:
        for p in lock.run_dir.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out.update(_flat(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix[:-1]: obj}


def resumed_config(cfg: TrainConfig, saved: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config a ``resume=`` continues with: ``cfg`` (recipe + overrides), placed in the resumed run's dir,
    after checking it differs from the run's own config (``saved``) only in :data:`RESUMABLE_CHANGES`."""
    mine, theirs = _flat(cfg), _flat(saved)
    changed = [f"{k}={mine[k]!r} (the run has {theirs[k]!r})" for k in mine
               if mine[k] != theirs.get(k) and not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(f"resume={cfg.resume} continues {run_dir} with its own settings, but these differ from "
                          f"the run's config: {'; '.join(changed)}. Resume without them (e.g. "
                          f"`vla-structppo train resume={run_dir}`), or start a new run from the checkpoint with "
                          "init_from= and another name=")
    return dataclasses.replace(cfg, output_dir=str(run_dir.parent), name=run_dir.name)


def config_to_resume(resume: str, overrides: list[str]) -> TrainConfig:
    """``vla-structppo train resume=X`` without a recipe: the checkpoint's own config, with the command
    line's overrides applied (``resume=`` among them)."""
    where = resolve(resume)
    return apply_overrides(read_config(where), overrides, str(where / CONFIG))
