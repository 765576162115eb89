"""OpenVLA's LIBERO evaluation protocol, reproduced bit-for-bit without TensorFlow.

The released OpenVLA LIBERO checkpoints were fine-tuned on images that went through the RLDS
pipeline (JPEG round trip, TF lanczos3 antialiased resize, 90 % centre crop), and their
evaluation script (`experiments/robot/libero/run_libero_eval.py`) feeds the policy images
prepared the same way, with actions post-processed for the LIBERO gripper. Success rates move
by points when any of these steps is approximated (a PIL lanczos resize is off by up to 29
grey levels; a PIL JPEG decoder by up to 14), so each step here reproduces the TensorFlow op
it replaces, and `tests/test_openvla_protocol.py` checks it against outputs of the original
TensorFlow code (`benchmarks/openvla_image_reference.py` regenerates them).

Steps (the order OpenVLA's evaluation uses):
1. `agentview_image[::-1, ::-1]` — LIBERO renders upside down; training data was rotated 180°.
2. `rlds_resize` — `tf.image.encode_jpeg` (quality 95, 4:2:0) then `tf.io.decode_image`
   (libjpeg's fast integer IDCT), `tf.image.resize(lanczos3, antialias=True)`, round half to
   even, clip, uint8.
3. `center_crop` — `tf.image.crop_and_resize` to the central 90 % of the area, bilinear,
   back to the same size, in [0, 1] float32, converted back to uint8 (TF truncates x·255.5).
4. actions: gripper [0, 1] → sign(2x − 1) → × −1 (LIBERO: −1 open, +1 close).

JPEG decoding needs `simplejpeg` (libjpeg-turbo with the fast IDCT selectable); Pillow always
decodes with the accurate IDCT and cannot match TensorFlow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = [
    "CENTER_CROP_SCALE",
    "ExactJpegMissingError",
    "center_crop",
    "center_crop_box",
    "check_exact_jpeg",
    "jpeg_round_trip",
    "lanczos3_resize",
    "libero_gripper",
    "openvla_libero_image",
    "rlds_resize",
]

CENTER_CROP_SCALE = 0.9  # area kept by the centre crop (OpenVLA `crop_scale`)
JPEG_QUALITY = 95  # tf.image.encode_jpeg default
_F32 = np.float32
_LANCZOS_RADIUS = 3.0
_PI = _F32(3.14159265359)  # the constant in TF's sampling_kernels.h


class ExactJpegMissingError(UserError):
    """The OpenVLA protocol was asked for but `simplejpeg` is not installed."""


def check_exact_jpeg() -> None:
    """Fail early, with the fix, when the exact JPEG decoder is not installed."""
    try:
        import simplejpeg  # noqa: F401
    except ImportError as exc:
        raise ExactJpegMissingError(
            "env.libero.protocol=openvla reproduces TensorFlow's JPEG round trip, which needs "
            "the `simplejpeg` package (Pillow cannot select libjpeg's fast IDCT). Install it with "
            "`pip install simplejpeg` (it is part of the `libero` extra), or set "
            "env.libero.protocol=raw."
        ) from exc


# ---------------------------------------------------------------------------------- JPEG
def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """`tf.io.decode_image(tf.image.encode_jpeg(image))` for an (H, W, 3) uint8 image.

    Pillow's encoder at quality 95 writes the same scan data as TensorFlow's (4:2:0 chroma);
    decoding uses libjpeg-turbo's fast integer IDCT with fancy upsampling, as TF's DecodeImage op
    does.
    """
    from PIL import Image

    check_exact_jpeg()
    import simplejpeg

    image = _rgb_uint8(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return simplejpeg.decode_jpeg(
        buffer.getvalue(), colorspace="RGB", fastdct=True, fastupsample=False
    )


# ------------------------------------------------------------------------- lanczos resize
def _libm_sinf() -> Any:
    # TF evaluates the kernel with float `std::sin`; glibc's sinf is what that calls on Linux.
    # Where libm cannot be loaded, float32 of the float64 sine differs by < 1e-4 after the
    # weighted sum (uint8 outputs unchanged on every reference image).
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        sinf = ctypes.CDLL(name).sinf
    except (OSError, AttributeError):
        return None
    sinf.restype = ctypes.c_float
    sinf.argtypes = [ctypes.c_float]
    return sinf


_SINF = _libm_sinf()


def _sin32(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, _F32)
    if _SINF is None:
        return np.sin(values.astype(np.float64)).astype(_F32)
    flat = [_SINF(float(v)) for v in values.ravel()]
    return np.asarray(flat, _F32).reshape(values.shape)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x).astype(_F32)
    radius = _F32(_LANCZOS_RADIUS)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = radius * _sin32(_PI * x) * _sin32(_PI * x / radius) / (_PI * _PI * x * x)
    value = np.where(x <= _F32(1e-3), _F32(1.0), value)
    return np.where(x > radius, _F32(0.0), value).astype(_F32)


@functools.lru_cache(maxsize=32)
def _resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first source index, normalised weights) per output sample, as TF's ComputeSpans does."""
    scale = _F32(_F32(out_size) / _F32(in_size))
    inv_scale = _F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F32(1.0))  # antialias: widen the kernel when shrinking
    radius = _F32(_LANCZOS_RADIUS)
    span = min(2 * int(np.ceil(radius * kernel_scale)) + 1, in_size)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), _F32)
    for i in range(out_size):
        centre = _F32(_F32(i) + _F32(0.5)) * inv_scale
        first = int(np.ceil(centre - radius * kernel_scale - _F32(0.5)))
        last = int(np.floor(centre + radius * kernel_scale - _F32(0.5)))
        first = min(max(first, 0), in_size - 1)
        last = min(max(last, 0), in_size - 1) + 1
        source = np.arange(first, last).astype(_F32)
        w = _lanczos3((source + _F32(0.5) - centre) * (_F32(1.0) / kernel_scale))
        total = _F32(0.0)
        for v in w:  # TF sums the weights in order, in float32
            total = _F32(total + v)
        weights[i, : last - first] = w * (_F32(1.0) / total)
        starts[i] = first
    return starts, weights


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    starts, weights = _resize_weights(image.shape[axis], out_size)
    source = np.moveaxis(image, axis, 0)
    n_in = source.shape[0]
    shape = (-1,) + (1,) * (source.ndim - 1)
    out = np.zeros((out_size,) + source.shape[1:], _F32)
    for j in range(weights.shape[1]):  # accumulate in order, in float32, like TF
        index = starts + j
        valid = (index < n_in).reshape(shape)
        term = weights[:, j].reshape(shape) * source[np.minimum(index, n_in - 1)]
        out = (out + np.where(valid, term, _F32(0.0))).astype(_F32)
    return np.moveaxis(out, 0, axis)


def lanczos3_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`tf.image.resize(image, size, method="lanczos3", antialias=True)`, float32 (H, W, C).

    Separable: rows (the height axis) first, then columns, as TF's ScaleAndTranslate op.
    """
    height, width = _check_size(size)
    pixels = np.asarray(image).astype(_F32)
    if pixels.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {pixels.shape}")
    return _resample_axis(_resample_axis(pixels, height, 0), width, 1)


def rlds_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenVLA's `resize_image`: JPEG round trip, lanczos3 resize, round half-even, uint8."""
    resized = lanczos3_resize(jpeg_round_trip(image), size)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- centre crop
def center_crop_box(scale: float = CENTER_CROP_SCALE) -> tuple[float, float, float, float]:
    """Normalised (y1, x1, y2, x2) of the centred box keeping `scale` of the area (float32)."""
    side = _F32(np.clip(np.sqrt(_F32(scale)), _F32(0.0), _F32(1.0)))
    offset = _F32((_F32(1.0) - side) / _F32(2.0))
    end = _F32(offset + side)
    return (offset, offset, end, end)  # type: ignore[return-value]


def _crop_coordinates(start: np.float32, end: np.float32, n_in: int, n_out: int) -> np.ndarray:
    if n_out == 1:
        return np.array([_F32(0.5 * (start + end) * (n_in - 1))], _F32)
    step = _F32(_F32((end - start) * _F32(n_in - 1)) / _F32(n_out - 1))
    base = _F32(start * _F32(n_in - 1))
    # no fused multiply-add: TF rounds the product before adding
    return (base + (np.arange(n_out).astype(_F32) * step).astype(_F32)).astype(_F32)


def center_crop(
    image: np.ndarray,
    scale: float = CENTER_CROP_SCALE,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """OpenVLA's evaluation centre crop: `tf.image.crop_and_resize` to `size` (default: same).

    uint8 → float32 in [0, 1] (`convert_image_dtype`), bilinear crop of the central `scale` of
    the area, clip, → uint8 with TF's saturating conversion (truncates x·255.5).
    """
    pixels = _rgb_uint8(image)
    height, width = pixels.shape[:2]
    y1, x1, y2, x2 = (_F32(v) for v in center_crop_box(scale))
    as_float = (pixels.astype(_F32) * _F32(1.0 / 255)).astype(_F32)
    out_height, out_width = (height, width) if size is None else _check_size(size)
    in_y = _crop_coordinates(y1, y2, height, out_height)
    in_x = _crop_coordinates(x1, x2, width, out_width)
    top, bottom = np.floor(in_y).astype(np.int64), np.ceil(in_y).astype(np.int64)
    left, right = np.floor(in_x).astype(np.int64), np.ceil(in_x).astype(np.int64)
    y_lerp = (in_y - top.astype(_F32)).astype(_F32)[:, None, None]
    x_lerp = (in_x - left.astype(_F32)).astype(_F32)[None, :, None]
    top_left, top_right = as_float[top][:, left], as_float[top][:, right]
    bottom_left, bottom_right = as_float[bottom][:, left], as_float[bottom][:, right]
    upper = (top_left + ((top_right - top_left) * x_lerp).astype(_F32)).astype(_F32)
    lower = (bottom_left + ((bottom_right - bottom_left) * x_lerp).astype(_F32)).astype(_F32)
    cropped = (upper + ((lower - upper) * y_lerp).astype(_F32)).astype(_F32)
    cropped = np.clip(cropped, _F32(0.0), _F32(1.0))
    return np.clip(cropped * _F32(255.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- pipeline
def openvla_libero_image(
    agentview: np.ndarray, size: int = 224, *, crop: bool = True
) -> np.ndarray:
    """A raw LIBERO `agentview_image` → the uint8 image OpenVLA's LIBERO evaluation feeds."""
    rotated = np.ascontiguousarray(np.asarray(agentview)[::-1, ::-1])
    image = rlds_resize(rotated, (size, size))
    return center_crop(image) if crop else image


def libero_gripper(action: np.ndarray) -> np.ndarray:
    """OpenVLA's gripper post-processing for LIBERO: [0, 1] → sign(2x − 1) → × −1.

    The RLDS data codes 0 = close, 1 = open; LIBERO wants −1 = open, +1 = close. An exact 0.5
    becomes −0.0 (sign(0) = 0), as in the original.
    """
    out = np.array(action, copy=True)
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)
    return out


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
    return int(size[0]), int(size[1])


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got {pixels.dtype} of shape {pixels.shape}"
        )
    return np.ascontiguousarray(pixels)
