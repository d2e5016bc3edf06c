#!/usr/bin/env bash
# A short Crafter run of hieros_s5_torch.py (3 levels) that fits the shared 2-core CPU of this session: the `debug`
# preset, a few thousand env steps, one update per 8 env steps. It shows the curves and the per-level subgoal
# diagnostics, not Crafter performance (the paper-size 1M-step run needs a GPU: ~1M updates).
# Curves: .venv/bin/python benchmark/hieros_plot.py --runs 'runs/crafter__hieros_crafter_L3*' --name crafter
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3000}
OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python hieros_s5_torch.py --env-id crafter --model-size debug --max-hierarchy 3 \
  --exp-name hieros_crafter_L3 --seed 1 --total-timesteps "$STEPS" --batch-size 8 --batch-length 32 --train-ratio 32 \
  --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 --critic-lr 1e-4 --num-envs 4 --threads 1 --log-every 25 --progress-every 500 \
  > benchmark/results/hieros_crafter_L3_s1.log 2>&1
