#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that benchmark/gpu_check.sh installs on an accelerator machine without
# internet: the packages of requirements.txt that such a machine lacks, at the versions of requirements.txt, and their
# own needs that it lacks. Run it on a machine with internet, in the repository; about 4.5 MB.
#
#   bash benchmark/gpu_wheels.sh            # Python 3.12, x86-64 Linux (the GPU machines of this workplace)
#   PY=3.11 bash benchmark/gpu_wheels.sh    # another Python version of the target machine
#
# The target machine is assumed to hold jax with CUDA, torch, flax, optax, tensorboard, numpy, pillow, imageio,
# cloudpickle and matplotlib (an image with current versions of these); what it lacks:
#   gymnasium 1.4.0        needs farama-notifications (and cloudpickle, numpy, typing-extensions: there)
#   crafter 1.8.3          needs opensimplex, ruamel.yaml (and imageio, numpy, pillow: there); PyPI has no wheel of
#                          crafter, so one is built here (pure Python)
#   ale-py 0.12.1          Atari; needs numpy
#   tyro 1.0.17            needs docstring-parser, typeguard; typeguard needs typing-extensions >= 4.14, so a current
#                          typing-extensions comes along (newer than an image's is harmless)
# Not carried: moviepy (only --capture-video needs it) and pytest/ruff (not run there).
for a in "$@"; do
  case "$a" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
done
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-3.12}"
DEST=.whl
mkdir -p "$DEST"
# versions: requirements.txt for its own lines, pinned here for the needs it does not list (those of this venv's pip)
pin() { grep -E "^$1==" requirements.txt | head -n 1 | sed 's/ .*//'; }
TOP=("$(pin gymnasium)" "$(pin ale-py)" "$(pin tyro)")
DEPS=(farama-notifications==0.0.6 opensimplex==0.4.5.1 ruamel.yaml==0.19.1 docstring-parser==0.18.0 typeguard==4.6.1
  typing-extensions==4.16.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${TOP[@]}" "${DEPS[@]}"
python3 -m pip wheel -q --no-deps -w "$DEST" "$(pin crafter)"  # sdist only on PyPI: a py3-none-any wheel built here
ls -1 "$DEST"
du -sh "$DEST"
