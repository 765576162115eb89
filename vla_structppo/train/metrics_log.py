"""``metrics.jsonl``: one JSON line per logged update (PPO) or epoch (SFT), written as it goes."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MetricsLog"]


class MetricsLog:
    """Appends records to ``path`` on the main process; every process keeps them in ``records``.

    ``keep_until``: on resume, lines logged after the checkpoint's update are dropped (they will be
    logged again); None starts a fresh file."""

    def __init__(self, path: Path, main: bool, keep_until: int | None = None) -> None:
        self.path, self.main, self.records = path, main, []
        if main and keep_until is not None and path.exists():
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [r for r in kept if r.get("charts/update", 0) <= keep_until]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
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
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
