#!/usr/bin/env bash
# THICK Dreamer (thick_dreamer_jax.py): the exact commands behind the figures in benchmark/results/ that the README and
# docs/thick.md show. Run from the repository root with the requirements installed; curves are read back from runs/ by
# benchmark/plot.py, stdout logs go to runs/logs/.
#   bash benchmark/thick.sh quickstart  # the README's quick start, timed on an otherwise idle machine (quickstart.json)
#   bash benchmark/thick.sh cartpole    # CartPole-v1, seeds 1 and 2 (about 80 min each on one CPU core)
#   bash benchmark/thick.sh crafter     # Crafter, 1m preset, beta 100: the twin of `bash benchmark/dreamerv3.sh crafter`
#   bash benchmark/thick.sh sparsity    # offline beta sweep on random-policy Crafter data (about 45 min)
#   bash benchmark/thick.sh alignment   # event alignment of the crafter run's checkpoint (needs that run)
#   bash benchmark/thick.sh speed       # update time of THICK against DreamerV3 at 12m (thick_update_time.jsonl)
#   bash benchmark/thick.sh plot        # thick_cartpole.{png,json}, thick_crafter.{png,json} (the latter with the
#                                       # DreamerV3 runs of `bash benchmark/dreamerv3.sh crafter`, seeds 1 and 2)
#   bash benchmark/thick.sh             # all of the above, one after the other
#   SEEDS="1" bash benchmark/thick.sh cartpole   # other seeds; flags after the group go to every run
# beta (--sparse-scale) is chosen per environment as docs/thick.md describes; 100 was the choice for these Crafter runs.
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/.."
GROUP="${1:-all}"
shift || true
case "$GROUP" in quickstart | cartpole | crafter | sparsity | alignment | speed | plot | all) ;; *)
  echo "error: unknown group '$GROUP' (see --help)" >&2; exit 2 ;; esac
mkdir -p runs/logs runs/probes
ONE_THREAD="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"  # one XLA thread: one core per run

quickstart() {
  # The README's quick start (QUICK_START in the script) as a user runs it: all cores (XLA's default threading), nothing
  # else running. Reports the wall-clock time from the start of the run to a 10-episode mean >= 400.
  for seed in ${SEEDS:-1}; do
    python thick_dreamer_jax.py --env-id CartPole-v1 --model-size debug --batch-size 16 --batch-length 32 \
      --train-ratio 256 --learning-rate 3e-4 --total-timesteps 15000 --save-model --exp-name thick_quickstart \
      --seed "$seed" "$@" | tee "runs/logs/thick_quickstart_s${seed}.log"
  done
  bash benchmark/dreamerv3.sh quickstart_plot
}

cartpole() {
  # DreamerV3's CartPole recipe (benchmark/dreamerv3.sh cartpole) with beta 1: debug preset, batch 16 x 32, train
  # ratio 256, lr 3e-4, 30k env steps. Target: a 10-episode mean >= 400 within 30k steps.
  for seed in ${SEEDS:-1 2}; do
    python thick_dreamer_jax.py --env-id CartPole-v1 --model-size debug --total-timesteps 30000 \
      --batch-size 16 --batch-length 32 --train-ratio 256 --learning-rate 3e-4 --log-every 1000 \
      --seed "$seed" --exp-name thick_cartpole_debug --save-model --eval-episodes 10 "$@" \
      | tee "runs/logs/thick_cartpole_debug_s${seed}.log"
  done
}

crafter() {
  # exactly the flags of DreamerV3's Crafter runs (1m, batch 16 x 32, train ratio 32, lr 1e-4, warm-up 100, one XLA
  # thread) plus --sparse-scale 100; stopped for time at 37k env steps (~2200 updates).
  for seed in ${SEEDS:-1}; do
    XLA_FLAGS="$ONE_THREAD" python thick_dreamer_jax.py --env-id crafter --model-size 1m --batch-size 16 \
      --batch-length 32 --train-ratio 32 --learning-rate 1e-4 --warmup 100 --total-timesteps 60000 --log-every 2000 \
      --checkpoint-every 4000 --save-model --eval-episodes 5 --sparse-scale 100 --seed "$seed" \
      --exp-name thick_crafter_1m_r32_lr1e-4_beta100 "$@" | tee "runs/logs/thick_crafter_1m_r32_lr1e-4_beta100_s${seed}.log"
  done
}

sparsity() {
  # beta in {0.1, 1, 10, 100}: 150 updates each of a debug-size agent on one random-policy dataset (32 x 32 renders)
  python benchmark/probes/thick_sparsity.py --betas 0.1 1 10 100 --updates 150 --batch-size 8 --batch-length 32 \
    --learning-rate 6e-4 --warmup 20 --image-size 32 --out benchmark/results/thick_sparsity "$@"
}

alignment() {
  # do the context changes of the trained crafter run sit at inventory changes and unlocks? (noise on and off)
  python benchmark/probes/thick_alignment.py runs/crafter__thick_crafter_1m_r32_lr1e-4_beta100__1__*/checkpoint.ckpt \
    --steps 3000 --out runs/probes/thick_alignment_r32_beta100 "$@"
}

speed() {
  # DreamerV3 and THICK alternating, Crafter shapes, batch 16 x 64, 4 timed updates per process, twice; nothing else
  # should run on the machine (docs/notes/cpu-update-time.md)
  SIZE=12m UPDATES=4 REPEATS=2 bash benchmark/speed/update_time.sh "$@"
}

plot() {
  python benchmark/plot.py --runs "runs/CartPole-v1__thick_cartpole_debug__*" --labels THICK --target 400 \
    --baseline 22.3 --panels thick/acting_change_rate thick/v_long_mean --title "thick_dreamer_jax.py, CartPole-v1 (debug)" \
    --out benchmark/results/thick_cartpole.png
  python benchmark/plot.py --runs "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__1__*" \
    "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__2__*" "runs/crafter__thick_crafter_1m_r32_lr1e-4_beta100__1__*" \
    --labels "DreamerV3, seed 1" "DreamerV3, seed 2" "THICK, beta 100, seed 1" --smooth 20 --bin 4000 \
    --crafter-window 12000 --random benchmark/results/crafter_random.json --baseline 1.37 \
    --panels thick/acting_change_rate --title "Crafter, 1m, batch 16x32, train ratio 32, lr 1e-4" \
    --out benchmark/results/thick_crafter.png
}

case "$GROUP" in
  quickstart | cartpole | crafter | sparsity | alignment | speed | plot) "$GROUP" "$@" ;;
  all) cartpole "$@"; crafter "$@"; sparsity; alignment; speed; plot ;;
esac
