#!/usr/bin/env bash
# THICK Dreamer on CartPole-v1 with the DreamerV3 CartPole config (benchmark/dreamerv3_learning.sh cartpole): debug
# preset, batch 16 x 32, train ratio 256, lr 3e-4; 30k env steps (the DreamerV3 target: average >= 400 within 30k).
# Run from the repository root; curves from runs/, logs in benchmark/results/thick_cartpole_s<seed>.log.
#   bash benchmark/thick_cartpole.sh                   # seed 1
#   SEEDS="1 2" bash benchmark/thick_cartpole.sh       # more seeds, one after the other
#   SEEDS=2 taskset -c 1 bash benchmark/thick_cartpole.sh   # one seed per core, side by side
# Flags after the script name are passed on (the last occurrence wins), e.g. --total-timesteps 20000.
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-1}"
for seed in $SEEDS; do
  python thick_dreamer_jax.py --env-id CartPole-v1 --model-size debug --total-timesteps 30000 \
    --batch-size 16 --batch-length 32 --train-ratio 256 --learning-rate 3e-4 --log-every 1000 \
    --seed "$seed" --exp-name thick_cartpole_debug --save-model --eval-episodes 10 "$@" \
    | tee "benchmark/results/thick_cartpole_s${seed}.log"
done
