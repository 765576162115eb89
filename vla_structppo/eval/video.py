"""MP4 videos of evaluation episodes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..config import ConfigError

__all__ = ["VIDEO_FPS", "VIDEO_MIN_SIDE", "safe_name", "write_video"]

VIDEO_FPS = 10
# frames are scaled up (nearest) to at least this side so a 32 px observation is watchable
VIDEO_MIN_SIDE = 128


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401 - the encoder imageio's ffmpeg plugin calls
    except ImportError:
        raise ConfigError("MP4 videos need imageio with ffmpeg: pip install 'imageio[ffmpeg]' "
                          "(or set eval.videos=0)") from None

    h, w = frames[0].shape[:2]
    scale = max(1, math.ceil(VIDEO_MIN_SIDE / max(h, w)))
    # H.264 wants sides divisible by 16 (macro blocks): pad rather than let ffmpeg resample
    ph, pw = (-h * scale) % 16, (-w * scale) % 16
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), fps=VIDEO_FPS, codec="libx264", quality=8, macro_block_size=16,
                                ffmpeg_log_level="error")
    try:
        for f in frames:
            f = np.asarray(f, dtype=np.uint8)
            if scale > 1:
                f = f.repeat(scale, 0).repeat(scale, 1)
            if ph or pw:
                f = np.pad(f, ((0, ph), (0, pw), (0, 0)))
            writer.append_data(f)
    finally:
        writer.close()
