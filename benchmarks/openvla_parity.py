"""Parity of the native OpenVLA port with the original remote code (transformers 4.40.1, timm 0.9.10).

    python benchmarks/openvla_parity.py make DIR                 # a tiny OpenVLA checkpoint + test pictures
    python benchmarks/openvla_parity.py port CKPT --images A.png B.png --instructions "Pick up X" "..." \\
        --unnorm-key bridge_orig --out port.json                  # the port's greedy tokens / log-probs / actions
    python benchmarks/openvla_parity.py compare port.json ref.json   # the table; exit 1 on a mismatch

``port`` writes, per (image, instruction) pair, what ``vla-structppo predict --json`` prints: the 7 greedy
token ids (each step restricted to the 256 action tokens), their log-probs under that restricted
softmax (float32) and the un-normalised action. A reference JSON made by running the original code on
the same checkpoint and pictures (any script that writes ``records`` with ``image``, ``instruction``,
``token_ids``, ``logprobs``, ``action``) is compared with tolerances: tokens equal, log-probs within
1e-4, actions within 1e-6. docs/vla.md#openvla says how the reference was made and what was measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LOGPROB_TOL = 1e-4
ACTION_TOL = 1e-6


def test_pictures(out: Path) -> list[Path]:
    """Deterministic pictures of several sizes (square, non-square, already 224, smaller than 224)."""
    from PIL import Image, ImageDraw

    paths = []
    for n, (w, h) in enumerate([(256, 256), (320, 240), (224, 224), (64, 48)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy + 40 * n) % 256)], -1)
        pic = Image.fromarray(img.astype(np.uint8))
        draw = ImageDraw.Draw(pic)
        draw.rectangle([w // 5 + 7 * n, h // 4, w // 2 + 5 * n, h // 2 + 9 * n], fill=(200, 30 * n, 20))
        draw.ellipse([w // 2, h // 2 - 5 * n, w - 10, h - 8], fill=(20, 180, 220 - 40 * n))
        path = out / f"picture{n}_{w}x{h}.png"
        pic.save(path)
        paths.append(path)
    return paths


INSTRUCTIONS = ["Pick up the RED block", "put the black bowl on the plate", "Open The Drawer",
                "move the point to the goal"]


def make(out: Path) -> None:
    from vla_structppo.testing.tiny_openvla import save_tiny_openvla

    save_tiny_openvla(out / "checkpoint", seed=0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    print("\n".join(str(p) for p in test_pictures(out / "images")))


def port(ckpt: str, images: list[str], instructions: list[str], unnorm_key: str | None, out: str) -> None:
    from vla_structppo.predict import Predictor

    predictor = Predictor(ckpt, [f"model.unnorm_key={unnorm_key}"] if unnorm_key else [])
    records = []
    for image, instruction in zip(images, instructions if len(instructions) > 1 else instructions * len(images)):
        r = predictor(image, instruction)
        records.append({k: r[k] for k in ("image", "instruction", "token_ids", "bins", "logprobs", "action")})
        print(f"{Path(image).name}: {r['token_ids']}", file=sys.stderr)
    Path(out).write_text(json.dumps({"unnorm_key": unnorm_key, "records": records}, indent=1) + "\n")


def compare(port_file: str, ref_file: str) -> int:
    mine, ref = (json.loads(Path(f).read_text())["records"] for f in (port_file, ref_file))
    print("| image | instruction | tokens equal | max log-prob diff | max action diff |\n|---|---|---|---|---|")
    bad = 0
    for a, b in zip(mine, ref):
        same = a["token_ids"] == b["token_ids"]
        dl = max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"]))
        da = max(abs(x - y) for x, y in zip(a["action"], b["action"]))
        bad += not (same and dl <= LOGPROB_TOL and da <= ACTION_TOL)
        print(f"| {Path(a['image']).name} | {a['instruction']} | {same} | {dl:.2e} | {da:.2e} |")
    print(f"\n{len(mine) - bad}/{len(mine)} pairs within tolerance (log-prob {LOGPROB_TOL}, action {ACTION_TOL})")
    return 1 if bad or len(mine) != len(ref) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make").add_argument("out", type=Path)
    p = sub.add_parser("port")
    p.add_argument("ckpt")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--instructions", nargs="+", required=True)
    p.add_argument("--unnorm-key")
    p.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("port")
    c.add_argument("ref")
    args = parser.parse_args()
    if args.cmd == "make":
        make(args.out)
    elif args.cmd == "port":
        port(args.ckpt, args.images, args.instructions, args.unnorm_key, args.out)
    else:
        sys.exit(compare(args.port, args.ref))


if __name__ == "__main__":
    main()
