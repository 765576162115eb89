"""The one place that picks MuJoCo's GL backend.

MuJoCo (and PyOpenGL) choose their GL platform when first imported, once per process. Every adapter that
may import ``mujoco`` — MetaWorld, LIBERO (through robosuite), gymnasium's MuJoCo envs — calls
:func:`use_headless_gl` first, so whichever comes first in a process leaves a backend the others can
render with: EGL (Mesa's llvmpipe on a CPU machine), unless the user chose one with ``MUJOCO_GL``.
"""

from __future__ import annotations

import os

__all__ = ["use_headless_gl"]


def use_headless_gl() -> str:
    """Set ``MUJOCO_GL`` (default ``egl``) and a matching ``PYOPENGL_PLATFORM`` unless already set; returns
    the backend."""
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend
