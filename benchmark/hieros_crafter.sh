#!/usr/bin/env bash
# A short Crafter run of hieros_s5_torch.py (3 levels) that fits the shared 2-core CPU of this session: the `debug`
# preset, one update per 8 env steps (batch 8 x 32, train ratio 32), 4 envs, one thread. It shows the curves and the
# per-level subgoal diagnostics, not paper-size Crafter performance (the paper-size 1M-step run needs a GPU).
#   bash benchmark/hieros_crafter.sh                                  # the 3k-step pipeline check (docs/hieros.md)
#   STEPS=200000 EXP=hieros_crafter_L3_long bash benchmark/hieros_crafter.sh   # the longer run (stopped for time)
# Flags after the command line are passed on (the last occurrence wins), e.g. --resume runs/<run>/checkpoint.pt.
# Curves: .venv/bin/python benchmark/hieros_plot.py --runs "runs/crafter__${EXP}__*" --name crafter
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3000}
EXP=${EXP:-hieros_crafter_L3}
OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python hieros_s5_torch.py --env-id crafter --model-size debug --max-hierarchy 3 \
  --exp-name "$EXP" --seed 1 --total-timesteps "$STEPS" --batch-size 8 --batch-length 32 --train-ratio 32 \
  --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 --critic-lr 1e-4 --num-envs 4 --threads 1 --log-every 25 --progress-every 500 \
  "$@" > "benchmark/results/${EXP}_s1.log" 2>&1
