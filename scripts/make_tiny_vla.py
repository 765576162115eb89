"""Write a tiny, random-weight real VLM (model + processor) that loads offline with ``from_pretrained``.

Why: tests, smoke runs and CPU benchmarks need a VLA checkpoint on disk without network access.

    python scripts/make_tiny_vla.py --arch llava --out runs/tiny-llava --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_structppo.testing.tiny_vlms import TINY_ARCHS, save_tiny_vla, write_action_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, choices=TINY_ARCHS)
    ap.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    ap.add_argument("--action-dims", type=int, default=7, help="action dims D (not for openvla: its own 7)")
    ap.add_argument("--num-bins", type=int, default=256, help="bins per dim K (the last K vocabulary ids)")
    ap.add_argument("--bound", type=float, default=1.0, help="actions span [-bound, bound] in every dim")
    ap.add_argument("--image-size", type=int, default=32, help="image side in pixels the processor produces")
    ap.add_argument("--action-row-cycles", type=float, default=16.0,
                    help="smoothness of the bin tokens' embedding rows (periods across the bins; 0 = i.i.d. rows)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = save_tiny_vla(args.arch, args.out, seed=args.seed, image_size=args.image_size,
                        action_row_cycles=args.action_row_cycles)
    if args.arch != "openvla":  # OpenVLA codes actions itself: its last 256 ids, un-normalised by norm_stats
        write_action_tokenizer(out, args.action_dims, args.num_bins, bound=args.bound)
    for path in sorted(out.iterdir()):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return out


if __name__ == "__main__":
    main()
