"""Regenerate `tests/fixtures/openvla_libero_image_ops.npz` by running OpenVLA's own code.

The fixture pins `vla_structppo.envs.openvla_protocol` to what OpenVLA's LIBERO evaluation
does to images and actions. This script runs the *original* functions on the images of
`tests/openvla_image_patterns.py`: it reads them from an OpenVLA checkout (nothing is copied
into this repository) and executes them with TensorFlow.

Run it in a scratch venv OUTSIDE the project (TensorFlow does not belong in ours):

    python -m venv /tmp/tfref && /tmp/tfref/bin/pip install tensorflow-cpu numpy pillow
    git clone https://github.com/openvla/openvla /tmp/openvla   # the fixture used c8f03f48
    /tmp/tfref/bin/python benchmarks/openvla_image_reference.py --openvla-src /tmp/openvla \
        --out /tmp/openvla_image_ops.npz
    python benchmarks/openvla_image_reference.py --compare /tmp/openvla_image_ops.npz

`--compare` (project venv, no TensorFlow) reports whether a regenerated file equals the
committed fixture key by key.

The centre crop in OpenVLA hard-codes a (224, 224) output; to cover small images the script
rewrites that one literal into a parameter in the parsed function, nothing else.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "openvla_libero_image_ops.npz"
sys.path.insert(0, str(ROOT / "tests"))

SOURCES = {
    "experiments/robot/libero/libero_utils.py": ["resize_image", "get_libero_image"],
    "experiments/robot/openvla_utils.py": ["crop_and_resize", "get_vla_action"],
    "experiments/robot/robot_utils.py": ["normalize_gripper_action", "invert_gripper_action"],
}
RESIZES = [
    ("checker32", (28, 28)),
    ("const32", (28, 28)),
    ("rand20x24", (13, 17)),
    ("rand20x24", (40, 48)),
    ("checker32", (40, 48)),
]
CROPS = [
    ("checker32", (28, 28)),
    ("checker32", (32, 32)),
    ("const32", (28, 28)),
    ("rand20x24", (28, 28)),
    ("rand20x24", (20, 24)),
]


class _SizeParameter(ast.NodeTransformer):
    """Turn the literal `(224, 224)` crop size into the name `_crop_size`."""

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        values = [getattr(e, "value", None) for e in node.elts]
        if values == [224, 224]:
            return ast.copy_location(ast.Name(id="_crop_size", ctx=ast.Load()), node)
        return node


def load_original(src: Path) -> dict[str, Any]:
    import tensorflow as tf
    from PIL import Image

    namespace: dict[str, Any] = {"tf": tf, "np": np, "Image": Image, "_crop_size": (224, 224)}
    crop_block = None
    for relative, names in SOURCES.items():
        tree = ast.parse((src / relative).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                if node.name == "get_vla_action":  # keep only its `if center_crop:` block
                    crop_block = next(
                        n for n in node.body
                        if isinstance(n, ast.If) and getattr(n.test, "id", "") == "center_crop"
                    )
                    continue
                if node.name == "crop_and_resize":
                    node = _SizeParameter().visit(node)
                module = ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[]))
                exec(compile(module, relative, "exec"), namespace)
    assert crop_block is not None, "get_vla_action has no `if center_crop:` block"
    namespace["_crop_block"] = compile(
        ast.fix_missing_locations(ast.Module(body=crop_block.body, type_ignores=[])),
        "get_vla_action",
        "exec",
    )
    return namespace


def generate(src: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf
    from openvla_image_patterns import test_images
    from PIL import Image

    fn = load_original(src)
    images = test_images()
    out: dict[str, np.ndarray] = {}

    def center_crop(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        fn["_crop_size"] = size
        scope = dict(fn, image=Image.fromarray(image).convert("RGB"))
        exec(fn["_crop_block"], scope)
        as_float = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)
        before_clip = fn["crop_and_resize"](as_float, 0.9, 1).numpy()
        return np.asarray(scope["image"]), before_clip

    for name, image in images.items():
        encoded = tf.image.encode_jpeg(image)
        if name != "grad256":
            decoded = tf.io.decode_image(encoded, expand_animations=False, dtype=tf.uint8)
            out[f"jpeg_{name}"] = decoded.numpy()
        out[f"jpegbytes_{name}"] = np.frombuffer(encoded.numpy(), np.uint8)
    for name, size in RESIZES:
        key = f"{name}_{size[0]}x{size[1]}"
        out[f"resize_{key}"] = fn["resize_image"](images[name], size)
        out[f"lanczos_{key}"] = tf.image.resize(
            images[name], size, method="lanczos3", antialias=True
        ).numpy()
        out[f"lanczosjpeg_{key}"] = tf.image.resize(
            out[f"jpeg_{name}"], size, method="lanczos3", antialias=True
        ).numpy()
    libero = fn["get_libero_image"]({"agentview_image": images["grad256"]}, 224)
    out["libero_grad256_224x224"] = libero
    out["crop_libero_grad256_224"], _ = center_crop(libero, (224, 224))
    for name, size in CROPS:
        key = f"{name}_{size[0]}" if size[0] == size[1] else f"{name}_{size[0]}x{size[1]}"
        out[f"crop_{key}"], out[f"cropf_{key}"] = center_crop(images[name], size)
    fn["_crop_size"] = (2, 2)
    scale = tf.sqrt(0.9)
    out["crop_box"] = np.array([[(1 - scale) / 2] * 2 + [(1 - scale) / 2 + scale] * 2], np.float32)
    gripper = np.linspace(-0.3, 0.47, 13 * 6).reshape(13, 6)
    last = np.array([-1, -0.5, 0, 0.25, 0.49, 0.5, 0.51, 0.75, 1, 1.5, 2, 0.4999999, 0.5000001])
    actions = np.concatenate([gripper, last[:, None]], 1)
    for suffix, dtype in (("", np.float64), ("_f32", np.float32)):
        x = actions.astype(dtype)
        out[f"gripper_in{suffix}"] = x.copy()
        out[f"gripper{suffix}"] = np.stack(
            [fn["invert_gripper_action"](fn["normalize_gripper_action"](a.copy(), True)) for a in x]
        )
    return out


def compare(path: Path) -> int:
    with np.load(FIXTURE) as a, np.load(path) as b:
        missing = sorted(set(a.files) ^ set(b.files))
        differ = [k for k in sorted(set(a.files) & set(b.files)) if not np.array_equal(a[k], b[k])]
    for key in missing:
        print(f"only in one file: {key}")
    for key in differ:
        print(f"differs: {key}")
    print("identical" if not (missing or differ) else f"{len(missing) + len(differ)} keys differ")
    return 1 if missing or differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--openvla-src", type=Path, help="an OpenVLA checkout")
    parser.add_argument("--out", type=Path, default=Path("openvla_image_ops.npz"))
    parser.add_argument("--compare", type=Path, help="compare a generated file with the fixture")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare)
    if args.openvla_src is None:
        parser.error("--openvla-src is required to generate")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **generate(args.openvla_src))
    args.out.write_bytes(buffer.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
