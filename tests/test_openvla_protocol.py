"""OpenVLA's LIBERO image/action protocol against outputs of the original TensorFlow code.

The fixture `tests/fixtures/openvla_libero_image_ops.npz` holds what OpenVLA's own functions
(`resize_image`, `get_libero_image`, the centre-crop block of `get_vla_action`, the gripper
helpers; openvla/openvla @ c8f03f48, TensorFlow 2.21 CPU) return on the images of
`tests/openvla_image_patterns.py`; `benchmarks/openvla_image_reference.py` regenerates it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from openvla_image_patterns import test_images

from vla_structppo.envs import openvla_protocol as proto

pytest.importorskip("simplejpeg")

FIXTURE = Path(__file__).parent / "fixtures" / "openvla_libero_image_ops.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return test_images()


def _sizes(key: str) -> tuple[str, tuple[int, int]]:
    name, size = key.rsplit("_", 1)
    h, _, w = size.partition("x")
    return name, (int(h), int(w or h))


def test_jpeg_encoder_writes_tensorflows_scan_data(ref, images):
    from PIL import Image

    for name, image in images.items():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95, dpi=(300, 300))
        assert buffer.getvalue() == ref[f"jpegbytes_{name}"].tobytes(), name


def test_jpeg_round_trip_is_bit_exact(ref, images):
    for key in (k for k in ref if k.startswith("jpeg_")):
        name = key[len("jpeg_") :]
        np.testing.assert_array_equal(proto.jpeg_round_trip(images[name]), ref[key], err_msg=name)


def test_lanczos_resize_matches_tensorflow(ref, images):
    keys = [k for k in ref if k.startswith("lanczos_")]
    assert len(keys) >= 5
    for key in keys:
        name, size = _sizes(key[len("lanczos_") :])
        out = proto.lanczos3_resize(images[name], size)
        assert out.dtype == np.float32 and out.shape == ref[key].shape
        # bit-exact with glibc sinf; float64 sine fallback stays within 1e-4
        np.testing.assert_allclose(out, ref[key], rtol=0, atol=1e-4, err_msg=key)


def test_rlds_resize_is_bit_exact_including_upscales(ref, images):
    keys = [k for k in ref if k.startswith("resize_")]
    assert any(_sizes(k[len("resize_") :])[1][0] > 32 for k in keys), "an upscale is covered"
    for key in keys:
        name, size = _sizes(key[len("resize_") :])
        np.testing.assert_array_equal(proto.rlds_resize(images[name], size), ref[key], err_msg=key)


def test_libero_image_pipeline_is_bit_exact(ref, images):
    raw = images["grad256"]  # LIBERO renders 256x256 in the released setup
    uncropped = proto.openvla_libero_image(raw, 224, crop=False)
    np.testing.assert_array_equal(uncropped, ref["libero_grad256_224x224"])
    np.testing.assert_array_equal(
        proto.openvla_libero_image(raw, 224), ref["crop_libero_grad256_224"]
    )


def test_center_crop_box_and_outputs_are_bit_exact(ref, images):
    assert np.array_equal(np.asarray(proto.center_crop_box(), np.float32), ref["crop_box"][0])
    keys = [k for k in ref if k.startswith("crop_") and k != "crop_box" and "libero" not in k]
    assert keys
    for key in keys:
        name, size = _sizes(key[len("crop_") :])
        out = proto.center_crop(images[name], size=size)
        np.testing.assert_array_equal(out, ref[key], err_msg=key)


def test_center_crop_same_size_is_the_identity_scale_free_path():
    image = np.full((8, 8, 3), 77, np.uint8)
    # a constant image survives crop + uint8 conversion exactly (77/255*255.5 truncates to 77)
    np.testing.assert_array_equal(proto.center_crop(image), image)


def test_gripper_post_processing_matches_openvla(ref):
    for suffix in ("", "_f32"):
        out = proto.libero_gripper(ref[f"gripper_in{suffix}"])
        assert out.dtype == ref[f"gripper{suffix}"].dtype
        np.testing.assert_array_equal(out, ref[f"gripper{suffix}"])
        np.testing.assert_array_equal(np.signbit(out), np.signbit(ref[f"gripper{suffix}"]))


def test_protocol_rejects_images_it_cannot_take():
    with pytest.raises(ValueError, match="uint8 RGB"):
        proto.jpeg_round_trip(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        proto.center_crop(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="height, width"):
        proto.lanczos3_resize(np.zeros((4, 4, 3), np.uint8), (0, 4))


def test_missing_simplejpeg_fails_with_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "simplejpeg":
            raise ImportError("no simplejpeg")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(proto.ExactJpegMissingError, match="pip install simplejpeg"):
        proto.check_exact_jpeg()
