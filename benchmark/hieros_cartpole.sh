#!/usr/bin/env bash
# CartPole-v1 learning runs of hieros_s5_torch.py, 1 level (flat S5-Dreamer) and 3 levels, `small` preset, on the CPU.
# The paper's learning rates (3e-5 actor/critic, 1e-4 model with a 1000-update warmup) are tuned for Atari at 16x64
# with one update per env step. On the shared 2-core CPU of this session a batch of 8 x 16 with train ratio 32 (one
# update per 4 env steps) and 8 envs (acting 8 envs costs about as much as 1) fits; model and critic rates are raised.
# Entropy 1e-2 instead of 3e-4: with 3e-4 (and with 3e-3) the policy became nearly deterministic within ~100 updates,
# before the reward head had learned anything, and the returns stayed at 9-10.
# Curves: .venv/bin/python benchmark/hieros_plot.py (reads runs/CartPole-v1__hieros_cartpole_L*).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-12000}
for SEED in ${SEEDS:-1}; do
  for LEVELS in 1 3; do
    OMP_NUM_THREADS=1 .venv/bin/python hieros_s5_torch.py --env-id CartPole-v1 --model-size small \
      --num-envs 8 --max-hierarchy "$LEVELS" --exp-name "hieros_cartpole_L$LEVELS" --seed "$SEED" --total-timesteps "$STEPS" \
      --batch-size 8 --batch-length 16 --train-ratio 32 --model-lr 3e-4 --model-warmup 100 \
      --actor-lr 3e-5 --critic-lr 1e-4 --entropy-coef 1e-2 --threads 1 --log-every 50 --progress-every 500 \
      --save-model --eval-episodes 10 > "benchmark/results/hieros_cartpole_L${LEVELS}_s${SEED}.log" 2>&1 &
  done
done
wait
