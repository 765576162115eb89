"""Deterministic test images for the OpenVLA image-protocol fixture.

Shared by `tests/test_openvla_protocol.py` and `benchmarks/openvla_image_reference.py` (which
runs the original TensorFlow code on them), so the fixture stores outputs only.
Patterns: smooth gradients with hard edges, 1-px lines and stripes (stress the resize kernel
and JPEG ringing), a checkerboard, uniform noise and a constant image.
"""

from __future__ import annotations

import numpy as np


def _scene(n: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    image = np.stack(
        [255.0 * x / (n - 1), 255.0 * y / (n - 1), 127.5 + 127.5 * np.sin(2 * np.pi * (x + y) / n)],
        -1,
    )
    s = n / 256.0
    for (y0, y1, x0, x1), colour in [
        ((30, 90, 40, 120), (255, 0, 0)),
        ((150, 160, 20, 230), (0, 0, 0)),
        ((100, 200, 170, 175), (255, 255, 255)),
        ((200, 250, 60, 110), (10, 200, 30)),
    ]:
        image[int(y0 * s) : int(y1 * s), int(x0 * s) : int(x1 * s)] = colour
    image[(np.abs(x - y) < 1.5) | (np.abs(x + y - (n - 1)) < 0.75)] = (255, 255, 0)
    stripes = (y > 120 * s) & (y < 140 * s) & (x < 100 * s) & ((x.astype(int) % 2) == 0)
    image[stripes] = (0, 0, 255)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_images() -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:32, 0:32]
    checker = (((y // 4) + (x // 4)) % 2).astype(np.float64)
    checker_rgb = np.stack(
        [checker * 200 + x * 1.5, (1 - checker) * 180 + y * 2.0, 8.0 * x - 4 * y + 100], -1
    )
    constant = np.empty((32, 32, 3), np.uint8)
    constant[...] = (200, 100, 50)
    return {
        "grad256": _scene(256),
        "checker32": np.clip(np.round(checker_rgb), 0, 255).astype(np.uint8),
        "rand20x24": np.random.RandomState(1).randint(0, 256, size=(20, 24, 3)).astype(np.uint8),
        "const32": constant,
    }


test_images.__test__ = False  # not a pytest test
