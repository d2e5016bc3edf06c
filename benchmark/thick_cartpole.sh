#!/usr/bin/env bash
# THICK Dreamer on CartPole-v1 (vector observations): does it learn? CPU-sized budget (12k policy steps, ~3k updates).
# Writes TensorBoard runs under runs/ and a log + summary under benchmark/results/; plot with benchmark/thick_plot.py.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-1}"
for seed in $SEEDS; do
  .venv/bin/python thick_dreamer_jax.py --env-id CartPole-v1 --model-size 1m --total-timesteps 12000 \
    --batch-size 8 --batch-length 32 --train-ratio 64 --learning-rate 1e-4 --warmup 100 --log-every 500 \
    --seed "$seed" --exp-name thick_cartpole --save-model --eval-episodes 10 \
    | tee "benchmark/results/thick_cartpole_s${seed}.log"
done
