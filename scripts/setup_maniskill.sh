#!/usr/bin/env bash
# Install ManiSkill3 (mani-skill 3.0.1, sapien 3.0.3) into its own venv (default: <repo>/.venv-maniskill),
# never into the project venv: its motion planner mplib 0.1.1 segfaults with numpy 2, so numpy<2 here.
#
#   bash scripts/setup_maniskill.sh [VENV_DIR]
#
# SAPIEN needs a Vulkan device even for state-only sims (cubes get a RenderMaterial). On a machine without
# a GPU that is Mesa's CPU rasteriser lavapipe, but Debian 12's own Mesa (22.3.6) lavapipe is rejected by
# SAPIEN; Mesa 25.0.7 from bookworm-backports works. We fetch that .deb with apt using a PRIVATE sources
# dir (nothing is added to the system's apt sources and nothing is installed system-wide), dpkg -x it
# under the venv and write an ICD json pointing at its libvulkan_lvp.so. The export
#     VK_ICD_FILENAMES=<venv>/vulkan-lvp/lvp_icd.json
# is written to <venv>/sim_env.sh (source it); vla_structppo/envs/maniskill.py sets it by itself when unset.
#
# Idempotent: every step checks whether it is already done, so a re-run takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-maniskill}"
VENV="$(mkdir -p "$(dirname "$VENV")" && cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
LVP_DIR="$VENV/vulkan-lvp"
ICD="$LVP_DIR/lvp_icd.json"
MESA_VERSION="25.0.7-2~bpo12+1"

# checks run from / in isolated mode: the repo's own vla_structppo.egg-info would fool them
pycheck() { (cd / && "$PY" -I -c "$1") >/dev/null 2>&1; }

log() { printf '[setup_maniskill] %s\n' "$*"; }

# -- 1. Vulkan loader (system) ------------------------------------------------------------------------------
if ! dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q "install ok installed"; then
    if [[ $(id -u) -eq 0 ]]; then
        log "apt-get install libvulkan1"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvulkan1
    else
        log "WARNING: libvulkan1 missing; run as root: apt-get install -y --no-install-recommends libvulkan1"
    fi
fi

# -- 2. venv, CPU torch, the project ------------------------------------------------------------------------
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
    "${PIP[@]}" -e "$REPO[dev]" "numpy<2" torch==2.13.0
fi

# -- 3. ManiSkill3 ----------------------------------------------------------------------------------------
if ! pycheck "import importlib.metadata as m, sys; sys.exit(not (m.version('mani-skill') == '3.0.1' and m.version('sapien') == '3.0.3'))"; then
    log "installing mani-skill==3.0.1 sapien==3.0.3 numpy<2"
    # opencv-python pinned: newer releases require numpy 2; torch pinned so nothing pulls a CUDA build
    "${PIP[@]}" mani-skill==3.0.1 sapien==3.0.3 "numpy<2" opencv-python==4.10.0.84 torch==2.13.0
fi

# -- 4. Mesa 25 lavapipe (user-space, under the venv) -----------------------------------------------------------
if [[ ! -f "$ICD" || ! -f "$LVP_DIR/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" ]]; then
    log "fetching mesa-vulkan-drivers $MESA_VERSION from bookworm-backports (private apt dirs)"
    APTD="$(mktemp -d)"
    trap 'rm -rf "$APTD"' EXIT
    mkdir -p "$APTD/parts" "$APTD/lists/partial" "$APTD/cache/archives/partial"
    cat >"$APTD/parts/backports.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_OPTS=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$APTD/parts"
              -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD/cache" -o APT::Sandbox::User=root)
    apt-get "${APT_OPTS[@]}" update -qq
    (cd "$APTD" && apt-get "${APT_OPTS[@]}" download -qq "mesa-vulkan-drivers=$MESA_VERSION")
    rm -rf "$LVP_DIR"
    mkdir -p "$LVP_DIR"
    dpkg -x "$APTD"/mesa-vulkan-drivers_*.deb "$LVP_DIR/root"
    cat >"$ICD" <<EOF
{
    "ICD": {
        "api_version": "1.4.305",
        "library_path": "$LVP_DIR/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so"
    },
    "file_format_version": "1.0.0"
}
EOF
fi
cat >"$VENV/sim_env.sh" <<EOF
# source me: the Vulkan device ManiSkill3 / SAPIEN use on a CPU-only machine (Mesa 25 lavapipe)
export VK_ICD_FILENAMES="$ICD"
EOF

# -- check -----------------------------------------------------------------------------------------------------
VK_ICD_FILENAMES="$ICD" "$PY" -c "
import gymnasium as gym, mani_skill.envs  # noqa: F401  (registers the envs)
env = gym.make('PickCube-v1', obs_mode='state', control_mode='pd_ee_delta_pose')
env.reset(seed=0)
print('[setup_maniskill] ok: PickCube-v1 action space', env.action_space)
env.close()
"
log "done. export VK_ICD_FILENAMES=$ICD   (or: source $VENV/sim_env.sh)"
log "Run the tests: $PY -m pytest -q -m sim_heavy tests/test_sim_heavy.py -k maniskill"
