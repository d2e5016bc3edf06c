#!/usr/bin/env bash
# Crafter run of thick_dreamer_jax.py with exactly the flags of the DreamerV3 run it is compared with
# (`LR=1e-4 bash benchmark/dreamerv3_learning.sh crafter_r32`): `1m` preset, batch 16 x 32, train ratio 32, lr 1e-4,
# one XLA thread (so a DreamerV3 run can use the other core), plus THICK's sparsity scale BETA (default 100: the β of the
# tuning procedure in docs/thick.md, where the change rate was small but above zero). Flags after the script name are
# passed on and override the ones here (the last occurrence wins), e.g. `--resume runs/<run>/checkpoint.ckpt`.
#   BETA=100 bash benchmark/thick_crafter.sh
set -euo pipefail
BETA=${BETA:-100}
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
python thick_dreamer_jax.py --env-id crafter --model-size 1m --batch-size 16 --batch-length 32 --train-ratio 32 \
  --learning-rate 1e-4 --warmup 100 --total-timesteps 60000 --log-every 2000 --checkpoint-every 4000 \
  --save-model --eval-episodes 5 --sparse-scale "$BETA" --seed 1 --exp-name "thick_crafter_1m_r32_lr1e-4_beta${BETA}" "$@"
