#!/usr/bin/env bash
# HIEROS (hieros_s5_torch.py): the exact commands behind the figures in benchmark/results/ that the README and
# docs/hieros.md show. Run from the repository root with the requirements installed; curves are read back from runs/ by
# benchmark/plot.py, stdout logs go to runs/logs/.
#   bash benchmark/hieros.sh quickstart       # the README's quick start for as long as DreamerV3's took (quickstart.json)
#   bash benchmark/hieros.sh cartpole         # CartPole-v1 at DreamerV3's budget, 1 and 3 levels, seeds 1 and 2
#   bash benchmark/hieros.sh cartpole_8envs   # the earlier CartPole recipe (8 envs, small batch), 1 and 3 levels, seed 1
#   bash benchmark/hieros.sh crafter          # Crafter, debug preset, 3 levels (seeds 1-4) and 1 level (seed 1)
#   bash benchmark/hieros.sh plot             # hieros_cartpole*.{png,json} (+ _levels.png), hieros_crafter.{png,json}
#   bash benchmark/hieros.sh                  # all of the above, one run after the other
#   SEEDS="1" LEVELS="3" bash benchmark/hieros.sh cartpole   # fewer runs; flags after the group go to every run
# Each run uses one torch thread (one CPU core). The paper configuration (3 levels, batch 16 x 64, train ratio 1024)
# is `python hieros_s5_torch.py --env-id atari100k_pong`; at about 18.6 CPU-s per env step it needs a GPU.
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/.."
GROUP="${1:-all}"
shift || true
case "$GROUP" in quickstart | cartpole | cartpole_8envs | crafter | plot | all) ;; *)
  echo "error: unknown group '$GROUP' (see --help)" >&2; exit 2 ;; esac
mkdir -p runs/logs

quickstart() {
  # The README's quick start (QUICK_START in the script) as a user runs it (all cores, nothing else running), stopped
  # with Ctrl-C after MINUTES (default 15: about what the DreamerV3 quick start takes): how far it gets in that time.
  for seed in ${SEEDS:-1}; do
    timeout --signal=INT "${MINUTES:-15}m" python hieros_s5_torch.py --env-id CartPole-v1 --model-size small \
      --batch-size 16 --batch-length 32 --train-ratio 256 --model-lr 3e-4 --actor-lr 3e-4 --critic-lr 3e-4 \
      --max-hierarchy 1 --total-timesteps 15000 --save-model --exp-name hieros_quickstart --seed "$seed" "$@" \
      | tee "runs/logs/hieros_quickstart_s${seed}.log" || true
  done
  bash benchmark/dreamerv3.sh quickstart_plot
}

cartpole() {
  # DreamerV3's CartPole budget (benchmark/dreamerv3.sh cartpole): 1 env, batch 16 x 32, train ratio 256 (0.5 level-0
  # updates per env step), learning rate 3e-4 for the world model, actor and critics (world-model warm-up 1000),
  # 30k env steps, `small` preset. Target: a 10-episode mean >= 400 within 30k steps.
  for seed in ${SEEDS:-1 2}; do
    for levels in ${LEVELS:-1 3}; do
      OMP_NUM_THREADS=1 python hieros_s5_torch.py --env-id CartPole-v1 --model-size small --num-envs 1 \
        --max-hierarchy "$levels" --batch-size 16 --batch-length 32 --train-ratio 256 --model-lr 3e-4 --actor-lr 3e-4 \
        --critic-lr 3e-4 --total-timesteps 30000 --threads 1 --save-model --eval-episodes 10 --seed "$seed" \
        --exp-name "hieros_cartpole_L${levels}" "$@" | tee "runs/logs/hieros_cartpole_L${levels}_s${seed}.log"
    done
  done
}

cartpole_8envs() {
  # the earlier recipe, kept for its figures (hieros_cartpole_8envs.*): 8 envs, batch 8 x 16, train ratio 32 (one
  # level-0 update per 4 env steps), lr world model 3e-4 (warm-up 100), actor and critics 1e-4, 12k env steps
  for seed in ${SEEDS:-1}; do
    for levels in ${LEVELS:-1 3}; do
      OMP_NUM_THREADS=1 python hieros_s5_torch.py --env-id CartPole-v1 --model-size small --num-envs 8 \
        --max-hierarchy "$levels" --exp-name "hieros_cartpole_L${levels}_8envs" --seed "$seed" --total-timesteps 12000 \
        --batch-size 8 --batch-length 16 --train-ratio 32 --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 \
        --critic-lr 1e-4 --threads 1 --log-every 200 --save-model --eval-episodes 10 "$@" \
        | tee "runs/logs/hieros_cartpole_L${levels}_8envs_s${seed}.log"
    done
  done
}

crafter() {
  # debug preset, batch 8 x 32, train ratio 32 (one level-0 update per 8 env steps), 4 envs, lr world model 3e-4
  # (warm-up 100), actor and critics 1e-4; 200k steps asked, each run stopped for time at 60-72k steps (about 2 h).
  # hieros_crafter.png also holds four runs of earlier versions of the script with this command (docs/hieros.md).
  for seed in ${SEEDS:-1 2 3 4}; do
    OMP_NUM_THREADS=1 python hieros_s5_torch.py --env-id crafter --model-size debug --max-hierarchy 3 \
      --exp-name hieros_crafter_L3 --seed "$seed" --total-timesteps 200000 --batch-size 8 --batch-length 32 \
      --train-ratio 32 --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 --critic-lr 1e-4 --num-envs 4 --threads 1 \
      --log-every 200 --checkpoint-every 10000 --save-model "$@" \
      | tee "runs/logs/hieros_crafter_L3_s${seed}.log"
  done
  # the flat agent (1 level) with the same budget: the control for the hierarchy
  OMP_NUM_THREADS=1 python hieros_s5_torch.py --env-id crafter --model-size debug --max-hierarchy 1 \
    --exp-name hieros_crafter_L1 --seed 1 --total-timesteps 200000 --batch-size 8 --batch-length 32 --train-ratio 32 \
    --model-lr 3e-4 --model-warmup 100 --actor-lr 1e-4 --critic-lr 1e-4 --num-envs 4 --threads 1 --log-every 200 \
    --checkpoint-every 10000 --save-model "$@" | tee runs/logs/hieros_crafter_L1_s1.log
}

plot() {
  # hieros_cartpole.png shows DreamerV3's curve too: run `bash benchmark/dreamerv3.sh cartpole` (one seed is enough) first
  LEVEL_PANELS=("subgoal/code_entropy_L{L}" "subgoal/achieved_reward_L{L}" "hieros/imag_ext_reward_L{L}")
  python benchmark/plot.py --runs "runs/CartPole-v1__hieros_cartpole_L1__*" "runs/CartPole-v1__hieros_cartpole_L3__*" \
    "runs/CartPole-v1__dreamerv3_cartpole_debug__*" --labels "HIEROS, 1 level" "HIEROS, 3 levels" DreamerV3 \
    --target 400 --baseline 22.3 --title "CartPole-v1 at DreamerV3's budget" --out benchmark/results/hieros_cartpole.png
  # the per-level diagnostics of those runs: actor entropy, imagined subgoal reward, reward loss
  python benchmark/plot.py --runs "runs/CartPole-v1__hieros_cartpole_L1__*" "runs/CartPole-v1__hieros_cartpole_L3__*" \
    --labels "1 level" "3 levels" --panels "losses/entropy_L{L}" "hieros/imag_subgoal_reward_L{L}" "losses/wm_reward_L{L}" \
    --title "hieros_s5_torch.py, CartPole-v1 at DreamerV3's budget: levels" \
    --out benchmark/results/hieros_cartpole_levels.png --json runs/logs/hieros_cartpole_levels.json
  python benchmark/plot.py --runs "runs/CartPole-v1__hieros_cartpole_L1_8envs__*" "runs/CartPole-v1__hieros_cartpole_L3_8envs__*" \
    --labels "1 level" "3 levels" --panels "${LEVEL_PANELS[@]}" --title "hieros_s5_torch.py, CartPole-v1, 8 envs" \
    --out benchmark/results/hieros_cartpole_8envs.png
  python benchmark/plot.py --runs "runs/crafter__hieros_crafter_L3__*" --labels "3 levels" --bin 12000 \
    --crafter-window 12000 --random benchmark/results/crafter_random.json --baseline 1.37 \
    --title "hieros_s5_torch.py, Crafter, debug, 3 levels" --out benchmark/results/hieros_crafter.png
  python benchmark/plot.py --runs "runs/crafter__hieros_crafter_L3__*" --labels "3 levels" --panels "${LEVEL_PANELS[@]}" \
    --title "hieros_s5_torch.py, Crafter: subgoal diagnostics" --out benchmark/results/hieros_crafter_subgoals.png \
    --json runs/logs/hieros_crafter_subgoals.json
  python benchmark/plot.py --runs "runs/crafter__hieros_crafter_L1__*" --labels "1 level (flat)" --bin 8000 \
    --crafter-window 8000 --baseline 1.37 --title "hieros_s5_torch.py, Crafter, debug, 1 level" \
    --out runs/logs/hieros_crafter_L1.png
}

case "$GROUP" in
  quickstart | cartpole | cartpole_8envs | crafter | plot) "$GROUP" "$@" ;;
  all) cartpole "$@"; cartpole_8envs "$@"; crafter "$@"; plot ;;
esac
