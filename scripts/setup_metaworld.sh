#!/usr/bin/env bash
# Install MetaWorld and what headless MuJoCo rendering needs (Mesa EGL / OSMesa, CPU-only).
#
#   bash scripts/setup_metaworld.sh            # into the active Python environment
#   PYTHON=.venv/bin/python bash scripts/setup_metaworld.sh
#
# Then render with MUJOCO_GL=egl (the env's default) or MUJOCO_GL=osmesa.
# Fast on a prepared machine: apt runs only when a package is missing, pip only when the pin is not met.
set -euo pipefail

PYTHON="${PYTHON:-python}"
APT_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "rendering libraries present: ${APT_PACKAGES[*]}"
fi

# gymnasium's MuJoCo renderer imports `packaging` without declaring it
if "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('metaworld') != '3.1.1')" 2>/dev/null \
        && "$PYTHON" -c "import packaging" 2>/dev/null; then
    echo "metaworld 3.1.1 present"
else
    "$PYTHON" -m pip install "metaworld==3.1.1" packaging
fi

MUJOCO_GL="${MUJOCO_GL:-egl}" "$PYTHON" - <<'EOF'
import gymnasium as gym
import metaworld  # noqa: F401 - registers the Meta-World/* env ids

env = gym.make("Meta-World/MT1", env_name="reach-v3", render_mode="rgb_array", width=64, height=64)
env.reset(seed=0)
img = env.render()
print(f"metaworld renders: image {img.shape}, mean {img.mean():.1f}")
env.close()
EOF
