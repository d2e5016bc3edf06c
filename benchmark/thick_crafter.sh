#!/usr/bin/env bash
# Crafter run of thick_dreamer_jax.py with exactly the flags of the DreamerV3 run it is compared with
# (`LR=1e-4 bash benchmark/dreamerv3_learning.sh crafter_r32`): `1m` preset, batch 16 x 32, train ratio 32, lr 1e-4,
# one XLA thread (so a DreamerV3 run can use the other core), plus THICK's sparsity scale BETA (default 100: the β of the
# tuning procedure in docs/thick.md, where the change rate was small but above zero). Flags after the script name are
# passed on and override the ones here (the last occurrence wins), e.g. `--resume runs/<run>/checkpoint.ckpt`.
#   BETA=100 bash benchmark/thick_crafter.sh
#   BETA=100 bash benchmark/thick_crafter.sh debug  # debug preset, the flags of dreamerv3_learning.sh crafter_debug
#   BETA=100 bash benchmark/thick_crafter.sh plot   # THICK (that β) against the DreamerV3 runs with the same flags
#   BETA=100 bash benchmark/thick_crafter.sh debug --model-size 1m --exp-name thick_crafter_1m_b8_beta100  # twin of
#     dreamerv3_learning.sh crafter_debug --model-size 1m (windows: benchmark/crafter_window.py ... --window 8000)
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
BETA=${BETA:-100}
if [ "${1:-}" = plot ]; then
  python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__1__*" \
    "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__2__*" "runs/crafter__thick_crafter_1m_r32_lr1e-4_beta${BETA}__1__*" \
    --labels "DreamerV3, seed 1" "DreamerV3, seed 2" "THICK, beta ${BETA}, seed 1" --smooth 20 --bin 4000 \
    --out benchmark/results/crafter_1m_r32_lr1e-4.png --title "Crafter, 1m, batch 16x32, train ratio 32, lr 1e-4" \
    --baseline 1.37 > benchmark/results/crafter_1m_r32_lr1e-4.json
  python benchmark/crafter_window.py "runs/crafter__thick_crafter_1m_r32_lr1e-4_beta${BETA}__1__*" --window 12000 \
    --random benchmark/results/crafter_random.json > "benchmark/results/thick_crafter_windows_beta${BETA}.json"
  exit 0
fi
if [ "${1:-}" = debug ]; then
  # the same flags as `bash benchmark/dreamerv3_learning.sh crafter_debug` (debug preset, batch 8 x 32, ratio 32, 4 envs)
  shift
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
  python thick_dreamer_jax.py --env-id crafter --model-size debug --batch-size 8 --batch-length 32 --train-ratio 32 \
    --num-envs 4 --learning-rate "${LR:-1e-4}" --warmup 100 --total-timesteps 200000 --log-every 2000 \
    --checkpoint-every 10000 --save-model --eval-episodes 5 --sparse-scale "$BETA" --seed 1 \
    --exp-name "thick_crafter_debug_lr${LR:-1e-4}_beta${BETA}" "$@"
  exit 0
fi
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
python thick_dreamer_jax.py --env-id crafter --model-size 1m --batch-size 16 --batch-length 32 --train-ratio 32 \
  --learning-rate 1e-4 --warmup 100 --total-timesteps 60000 --log-every 2000 --checkpoint-every 4000 \
  --save-model --eval-episodes 5 --sparse-scale "$BETA" --seed 1 --exp-name "thick_crafter_1m_r32_lr1e-4_beta${BETA}" "$@"
