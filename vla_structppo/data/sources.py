"""What ``sft.dataset`` names, made local: this project's demonstrations as they are, a LeRobot dataset (a dir
with ``meta/info.json`` or a Hub id) converted once into a cache (:mod:`vla_structppo.data.lerobot`)."""

from __future__ import annotations

from pathlib import Path

from ..files import is_hub_repo_id

__all__ = ["resolve_demos"]


def resolve_demos(source: str | Path, *, image_key: str | None = None, action_key: str = "action",
                  revision: str | None = None) -> Path:
    """The local demonstration dataset dir for ``source`` (``load_demos`` then checks and reads it)."""
    path = Path(source).expanduser()
    is_lerobot = (path / "meta" / "info.json").is_file()
    if not is_lerobot and (path.exists() or not is_hub_repo_id(str(source))):
        return path  # ours, or nothing there: load_demos says how to make one
    from .lerobot import cached_conversion

    return cached_conversion(str(source), image_key=image_key, action_key=action_key, revision=revision)
