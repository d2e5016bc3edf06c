#!/usr/bin/env bash
# THICK Dreamer on CartPole-v1 with the DreamerV3 CartPole config (benchmark/dreamerv3_learning.sh cartpole): debug
# preset, batch 16 x 32, train ratio 256, lr 3e-4; 20k env steps. Run from the repository root; curves from runs/.
#   bash benchmark/thick_cartpole.sh            # SEEDS="1 2" for more seeds
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-1}"
for seed in $SEEDS; do
  python thick_dreamer_jax.py --env-id CartPole-v1 --model-size debug --total-timesteps 20000 \
    --batch-size 16 --batch-length 32 --train-ratio 256 --learning-rate 3e-4 --log-every 1000 \
    --seed "$seed" --exp-name thick_cartpole_debug --save-model --eval-episodes 10 \
    | tee "benchmark/results/thick_cartpole_s${seed}.log"
done
