#!/usr/bin/env bash
# GPU check of the three scripts on one accelerator machine, in under 8 minutes, with nothing fetched from the internet.
# Per script at its Crafter default size (dreamerv3_jax.py and thick_dreamer_jax.py: --model-size 12m, batch 16 x 64;
# hieros_s5_torch.py: the paper preset, 3 levels, batch 16 x 64): seconds per update, policy step latency (1 env),
# env steps per second of the script's own run on Crafter at its default train ratio, peak GPU memory; the device and the
# versions named. Writes gpu_check.json, gpu_check.md (the summary table) and gpu_check.log into --out.
#
#   bash benchmark/gpu_check.sh                     # the check; writes benchmark/results/gpu_check.{json,md,log}
#   bash benchmark/gpu_check.sh --out DIR           # ... into DIR (e.g. $OUT of a remote run)
#   bash benchmark/gpu_check.sh --dry-run --out DIR # every part on the CPU with tiny sizes (CI; not a measurement; THICK
#                                                   # without its env run, which repeats dreamerv3_jax.py's code path)
#   bash benchmark/gpu_check.sh --scripts thick_dreamer_jax.py --budget 240   # a rerun of one script
#   bash benchmark/gpu_check.sh --budget 900 --env-seconds 120                 # more time: the issue's 2-minute env runs
#
# Time budget, seconds (--budget, default 420 in all, so the check ends in 7 minutes even if a part hangs):
#   setup: installing .whl/ (a few seconds) | info 60 | update parts, each with the import, tracing and compile:
#   dreamerv3 120, thick 120, hieros 60 | env runs: the three share equally what the other parts leave (skipped below
#   30 s), each stopped at its share | 10 s kept for the report. Expected (an estimate, not yet measured on a GPU):
#   20-90 s per update part, so 60-90 s per env run, of which the start, the compile (read from the cache that the
#   update part filled) and the prefill take the first 20-40 s. Each env run's SPS is measured between its first
#   progress line after the first update and its last line: a window of about a minute, not the issue's 2 minutes.
# Several GPUs: the JAX scripts get --num-devices N only if their --help lists the flag, HIEROS runs under torchrun
#   --nproc_per_node N only if torch.distributed is available and the script uses it (both detected, never assumed).
# Packages: a machine without internet lacks gymnasium, crafter, ale-py and tyro (and their needs): run
#   `bash benchmark/gpu_wheels.sh` on a machine with internet first; it fills .whl/ (git-ignored, about 4.5 MB), and
#   this check installs from .whl/ into $GPU_CHECK_SITE (default /tmp/cleanwm-site, put on PYTHONPATH) when one of them
#   is missing. Python: $PYTHON (default python3).
#
# On a remote GPU runner that copies the repository (with .whl/ carried along) and returns the folder $OUT, after
# `bash benchmark/gpu_wheels.sh` here, e.g. the device tool of the sessions that develop this project:
#   run  carry [".whl"]  command "bash benchmark/gpu_check.sh --out $OUT"  timeout_s 540
# then copy gpu_check.json and gpu_check.md from $OUT into benchmark/results/. A rerun that must fit in less time:
# --budget 300, or --scripts with the missing scripts only.
for a in "$@"; do
  case "$a" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
done
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
PYTHON="${PYTHON:-python3}"
ARGS=("$@")
if [[ " $* " == *" --dry-run "* ]]; then
  # the CPU even on a GPU machine; XLA:CPU compiles about 3x faster without its optimisations and fusion emitters (the
  # tiny models then run about 1.5x slower; the dreamerv3 debug train step compiles in 7 instead of 21 CPU-seconds)
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" JAX_DISABLE_MOST_OPTIMIZATIONS=1
  FAST="${XLA_FLAGS:-} --xla_cpu_use_fusion_emitters=false"
  if XLA_FLAGS="$FAST" "$PYTHON" -c "import jax; jax.numpy.zeros(1).block_until_ready()" 2>/dev/null; then
    export XLA_FLAGS="$FAST"  # (a jaxlib that does not know the flag aborts: then it is left out)
  fi
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
