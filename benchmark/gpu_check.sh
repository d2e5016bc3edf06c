#!/usr/bin/env bash
# GPU check of the three scripts on one accelerator machine, in under 8 minutes, with nothing fetched from the internet.
# Per script at its Crafter default size (dreamerv3_jax.py and thick_dreamer_jax.py: --model-size 12m, batch 16 x 64;
# hieros_s5_torch.py: the paper preset, 3 levels, batch 16 x 64): seconds per update, policy step latency (1 env),
# env steps per second of the script's own run on Crafter at its default train ratio, peak GPU memory; the device and the
# versions named. Writes gpu_check.json, gpu_check.md (the summary table) and gpu_check.log into --out.
#
#   bash benchmark/gpu_check.sh                     # the check; writes benchmark/results/gpu_check.{json,md,log}
#   bash benchmark/gpu_check.sh --out DIR           # ... into DIR (e.g. $OUT of a remote run)
#   bash benchmark/gpu_check.sh --dry-run --out DIR # every part on the CPU with tiny sizes (CI; not a measurement)
#   bash benchmark/gpu_check.sh --budget 900 --env-seconds 120   # more time: 2-minute env runs
#
# Time budget (default 460 s in all; each part has its own limit, so the check ends in time even if one part hangs):
#   setup (wheels, about 10 s) | info 60 | update parts: dreamerv3 100, thick 100, hieros 60 (each includes the import
#   and the compile) | the three env runs share what is left (about 80-100 s each when the update parts take what they
#   take on an H100; at least 30 s) | report 10 s. Each env run's SPS is measured between its first progress line after
#   the first update (compile and prefill excluded) and its last line.
# Several GPUs: the JAX scripts get --num-devices N only if their --help lists the flag, HIEROS runs under torchrun
#   --nproc_per_node N only if torch.distributed is available and the script uses it (both detected, never assumed).
# Packages: a machine without internet lacks gymnasium, crafter, ale-py and tyro (and their needs): run
#   `bash benchmark/gpu_wheels.sh` on a machine with internet first; it fills .whl/ (git-ignored), and this check
#   installs from .whl/ into $GPU_CHECK_SITE (default /tmp/cleanwm-site, on PYTHONPATH) when a package is missing.
#   Python: $PYTHON (default python3).
#
# The device tool of this workplace (one H100/H200 machine, 15 minutes of device time a session), after
# `bash benchmark/gpu_wheels.sh` here:
#   run  carry [".whl"]  command "bash benchmark/gpu_check.sh --out $OUT"  timeout_s 540
# then copy $OUT's gpu_check.json / gpu_check.md into benchmark/results/ and give the machine back.
for a in "$@"; do
  case "$a" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
done
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
PYTHON="${PYTHON:-python3}"
ARGS=("$@")
if [[ " $* " == *" --dry-run "* ]]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""  # the CPU even on a GPU machine
  export JAX_DISABLE_MOST_OPTIMIZATIONS=1  # tiny models: XLA's optimisations would cost more than they save
fi

# packages: install the carried wheels when one of the needed modules is missing
need() { "$PYTHON" -c "import gymnasium, crafter, tyro, ale_py" 2>/dev/null; }
if ! need; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    SITE="${GPU_CHECK_SITE:-/tmp/cleanwm-site}"
    echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    GPU_CHECK_WHEELS="$(cd .whl && ls *.whl | tr '\n' ' ')"
    export GPU_CHECK_WHEELS
    need || { echo "error: gymnasium, crafter, tyro or ale_py still missing after installing .whl/" >&2; exit 2; }
  else
    echo "error: gymnasium, crafter, tyro or ale_py is missing and there is no .whl/ folder: run" \
      "'bash benchmark/gpu_wheels.sh' on a machine with internet, or 'pip install -r requirements.txt'" >&2
    exit 2
  fi
fi
exec "$PYTHON" benchmark/speed/gpu_probe.py check --setup-seconds "$(($(date +%s) - T0))" "${ARGS[@]}"
