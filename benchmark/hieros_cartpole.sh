#!/usr/bin/env bash
# CartPole-v1 learning runs of hieros_s5_torch.py, 1 level (flat S5-Dreamer) and 3 levels, `small` preset, on the CPU.
# The paper's learning rates (3e-5 actor/critic, 1e-4 model with a 1000-update warmup) are tuned for Atari at 16x64
# with one update per env step. On the shared, overloaded 2-core CPU of this session a batch of 8 x 16 with train ratio
# 32 (one update per 4 env steps) and 8 envs (acting 8 envs costs about as much as 1) fits, so the rates are raised.
# Everything else is the paper configuration (entropy 3e-4, ETBS tau 0.3, weights 1.0/0.3/0.1, 4^L schedule).
# Curves: .venv/bin/python benchmark/hieros_plot.py (reads runs/CartPole-v1__hieros_cartpole_L*).
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-12000}
# BF16=1: the same runs under --bf16-autocast (exp name and log get a _bf16 suffix); LEVELS_LIST="1" for one level only
if [ "${BF16:-0}" = 1 ]; then EXTRA="--bf16-autocast"; TAG="_bf16"; else EXTRA=""; TAG=""; fi
for SEED in ${SEEDS:-1}; do
  for LEVELS in ${LEVELS_LIST:-1 3}; do
    OMP_NUM_THREADS=1 .venv/bin/python hieros_s5_torch.py --env-id CartPole-v1 --model-size small --num-envs 8 \
      --max-hierarchy "$LEVELS" --exp-name "hieros_cartpole_L$LEVELS$TAG" --seed "$SEED" --total-timesteps "$STEPS" \
      --batch-size 8 --batch-length 16 --train-ratio 32 --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 \
      --critic-lr 1e-4 --threads 1 --log-every 50 --progress-every 500 --save-model --eval-episodes 10 $EXTRA \
      > "benchmark/results/hieros_cartpole_L${LEVELS}${TAG}_s${SEED}.log" 2>&1 &
  done
done
wait
