"""``metrics.jsonl``: one JSON line per logged update (PPO) or epoch (SFT), written as it goes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

__all__ = ["MetricsLog", "read_metrics"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl``; a half-written last line (a run killed while writing it) is
    dropped with a warning, a damaged line elsewhere is an error naming it."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                warnings.warn(f"{path}: dropped its last line, written only in part (the run was stopped while "
                              "writing it)", stacklevel=2)
                continue
            raise ValueError(f"{path} line {n} is not JSON; the file was edited or damaged") from None
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """Appends records to ``path`` on the main process; every process keeps them in ``records``.

    ``keep_until``: on resume, lines logged after the checkpoint's update are dropped (they will be
    logged again, identically: resume is exact); None starts a fresh file."""

    def __init__(self, path: Path, main: bool, keep_until: int | None = None) -> None:
        self.path, self.main, self.records = path, main, []
        if main and keep_until is not None and path.exists():
            kept = [r for r in read_metrics(path) if r.get("charts/update", 0) <= keep_until]
            _write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif main:
            path.write_text("")

    def append(self, metrics: dict[str, float]) -> None:
        self.records.append(dict(metrics))
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")

    def rewrite(self) -> None:
        """Write ``records`` again (after the last record was amended)."""
        if self.main:
            _write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
