"""How far the behaviour baseline's numbers move on another machine's float path, and how far a real change
moves them: the measurement behind the tolerance of ``tests/test_behaviour_preserved.py``.

    OMP_NUM_THREADS=1 python benchmarks/behaviour_spread.py            # ~4 min on 2 cores

Another CPU runs the same code through other kernels: PyTorch's ATen picks AVX-512, AVX2 or plain code at
start-up (``ATEN_CPU_CAPABILITY``), MKL its own path (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``), oneDNN its ISA
(``ONEDNN_MAX_CPU_ISA``) and OpenBLAS (numpy) its core type (``OPENBLAS_CORETYPE``). Each of these settings is one
"machine" here: ``tests/behaviour_runs.py``'s short runs are recorded under it in a fresh process and compared
value by value with a recording under the default path. Then three small, real changes of behaviour are
recorded the same way (a 0.5% larger PPO clip, a 0.1% heavier value loss, a 1e-4 shift of every normalised
advantage) to show the tolerance still catches them. Prints one row per recording: how many of the ~1,400
compared values differ at all, the largest absolute difference, the worst difference as a multiple of the
tolerance (``math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)``: < 1 passes) and the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from behaviour_runs import ATOL, RTOL, differences  # noqa: E402

FLOAT_PATHS: dict[str, dict[str, str]] = {
    "default (AVX-512 here)": {},
    "ATen AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen plain": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL AVX2": {"MKL_CBWR": "AVX2"},
    "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    "OpenBLAS Haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "an AVX2 machine": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                        "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
}
CHANGES = {"clip x1.005": "clip", "value loss x1.001": "value_loss", "advantages +1e-4": "advantage_shift"}

# run in a fresh interpreter: the kernel choices are read when torch / numpy load
_RECORD = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from pathlib import Path
from behaviour_runs import record
change = {change!r}
if change:
    import vla_structppo.train.advantages as A
    import vla_structppo.train.ppo_update as U
    if change == "clip":
        real_pg = U.ppo_policy_loss
        U.ppo_policy_loss = lambda lp, lo, adv, clip, **kw: real_pg(lp, lo, adv, clip * 1.005, **kw)
    elif change == "value_loss":
        real_v = U.value_loss
        U.value_loss = lambda *a, **kw: real_v(*a, **kw) * 1.001
    elif change == "advantage_shift":
        real_n = A.normalize_advantages
        A.normalize_advantages = lambda c, r, **kw: real_n(c, r, **kw) + 1e-4
Path({out!r}).write_text(json.dumps(record(Path({work!r}))))
"""


def _record(tmp: Path, name: str, env: dict[str, str], change: str = "") -> dict:
    out, work = tmp / f"{name}.json", tmp / name
    code = _RECORD.format(tests=str(ROOT / "tests"), change=change, out=str(out), work=str(work))
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, check=True, capture_output=True)
    return json.loads(out.read_text())


def _floats(old, new, path=""):
    """Every compared (old, new) float pair (hashes left out, as the tolerant comparison does)."""
    if isinstance(old, dict):
        for k in old:
            if k in new and not k.endswith("sha256"):
                yield from _floats(old[k], new[k], f"{path}/{k}")
    elif isinstance(old, list) and isinstance(new, list):
        for a, b in zip(old, new):
            yield from _floats(a, b, path)
    elif isinstance(old, float) or isinstance(new, float):
        yield float(old), float(new)


def row(name: str, reference: dict, numbers: dict) -> str:
    pairs = list(_floats(reference, numbers))
    differ = [(a, b) for a, b in pairs if a != b]
    largest = max((abs(a - b) for a, b in differ), default=0.0)
    worst = max((abs(a - b) / max(RTOL * max(abs(a), abs(b)), ATOL) for a, b in differ), default=0.0)
    verdict = "passes" if not differences(reference, numbers, exact=False) else "FAILS"
    return f"| {name} | {len(differ)} / {len(pairs)} | {largest:.2e} | {worst:.3g} | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the recordings in this dir (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        rows = []
        reference = _record(tmp, "reference", {})
        for n, (name, env) in enumerate(FLOAT_PATHS.items()):
            rows.append(row(name, reference, _record(tmp, f"path{n}", env)))
            print(rows[-1], flush=True)
        for n, (name, change) in enumerate(CHANGES.items()):
            rows.append(row(f"change: {name}", reference, _record(tmp, f"change{n}", {}, change)))
            print(rows[-1], flush=True)
    print(f"\ntolerance: math.isclose(rel_tol={RTOL}, abs_tol={ATOL}); ratio = |a - b| / max(rel_tol * max(|a|, |b|), "
          "abs_tol), < 1 passes\n")
    print("| recording | values that differ | largest abs difference | worst / tolerance | verdict |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
