#!/usr/bin/env bash
# Learning benchmarks of dreamerv3_jax.py (CPU-sized). Run from the repository root; curves are read back from runs/.
#   bash benchmark/dreamerv3_learning.sh cartpole   # CartPole-v1, target: average return >= 400 within 30k env steps
#   taskset -c 1 bash benchmark/dreamerv3_learning.sh cartpole --seed 2   # a second seed on the other core
#   bash benchmark/dreamerv3_learning.sh crafter    # short Crafter run, compared with a random policy (return 1.37 over
#                                                   # 200 episodes: benchmark/results/crafter_random.json, made by
#                                                   # python benchmark/random_baseline.py --env-id crafter --episodes 200 --seed 1000)
#   LR=1e-4 bash benchmark/dreamerv3_learning.sh crafter_r32   # train ratio 32 (docs/dreamerv3.md: lr 3e-4 collapsed)
#   bash benchmark/dreamerv3_learning.sh plot
#   bash benchmark/dreamerv3_learning.sh crafter_debug   # debug preset, many cheap updates (and the THICK twin:
#   BETA=100 bash benchmark/thick_crafter.sh debug)      # compared by: bash benchmark/dreamerv3_learning.sh plot_debug
#   bash benchmark/dreamerv3_learning.sh crafter_debug --actor-entropy 3e-3 --exp-name dreamerv3_crafter_debug_ent3e-3
#   bash benchmark/dreamerv3_learning.sh crafter_debug --actor-entropy 1e-3 --exp-name dreamerv3_crafter_debug_ent1e-3
#   bash benchmark/dreamerv3_learning.sh plot_ent        # the entropy-bonus runs against the default 3e-4
#   LR=3e-4 bash benchmark/dreamerv3_learning.sh crafter_debug --actor-lr 1e-4 --critic-lr 1e-4 \
#     --exp-name dreamerv3_crafter_debug_wm3e-4_ac1e-4            # (+ --reward-scale 10 --exp-name ..._rew10)
#   bash benchmark/dreamerv3_learning.sh plot_rew        # those two against crafter_debug
#   bash benchmark/dreamerv3_learning.sh crafter_debug --opt-eps 1e-5 --exp-name dreamerv3_crafter_debug_eps1e-5
#   LR=3e-4 bash benchmark/dreamerv3_learning.sh crafter_debug --actor-lr 1e-4 --critic-lr 1e-4 --opt-eps 1e-5 \
#     --exp-name dreamerv3_crafter_debug_wm3e-4_ac1e-4_eps1e-5
#   STEPS=200000 EXP=hieros_crafter_L1 bash benchmark/hieros_crafter.sh --max-hierarchy 1 --checkpoint-every 10000 --save-model
#   bash benchmark/dreamerv3_learning.sh plot_flat       # those three: flat agents, same budget (returns and entropy)
#   bash benchmark/dreamerv3_learning.sh crafter_debug --model-size 1m --seed 1 --exp-name dreamerv3_crafter_1m_b8  # (and --seed 2)
#   bash benchmark/dreamerv3_learning.sh plot_1m_b8      # those two
# Flags after the mode are passed on to the script and override the ones here (the last occurrence wins), e.g.
#   LR=1e-4 bash benchmark/dreamerv3_learning.sh crafter_r32 --seed 2 --checkpoint-replay
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
MODE=${1:-cartpole}
shift || true
case "$MODE" in
  cartpole)
    # the 'debug' preset with 16 x 32 batches, train ratio 256 (0.5 updates per step) and lr 3e-4: CPU-sized
    python dreamerv3_jax.py --env-id CartPole-v1 --model-size debug --batch-size 16 --batch-length 32 \
      --train-ratio 256 --learning-rate 3e-4 --total-timesteps 30000 --log-every 1000 --exp-name dreamerv3_cartpole_debug \
      --save-model --eval-episodes 10 "$@"
    ;;
  crafter)
    # the '1m' preset, batch 16 x 32, train ratio 16 (1 update per 32 steps), lr 1e-4 with a 100-update warm-up:
    # one update takes ~2.7 s on one CPU core, so the 40k steps take ~1.5 h there (docs/dreamerv3.md: the run stopped at 19k)
    python dreamerv3_jax.py --env-id crafter --model-size 1m --batch-size 16 --batch-length 32 --train-ratio 16 \
      --learning-rate 1e-4 --warmup 100 --total-timesteps 40000 --log-every 2000 --exp-name dreamerv3_crafter_1m
    ;;
  crafter_r32)
    # train ratio 32 (1 update per 16 steps), LR=3e-4 (the CartPole rate; its actor entropy collapses) or LR=1e-4; one
    # XLA thread, so a THICK run with the same flags (thick_dreamer_jax.py ... --sparse-scale 1.0) can use the other core.
    # A run stopped for time continues with the same command plus --resume runs/<run>/checkpoint.ckpt (docs/dreamerv3.md:
    # the lr 1e-4 run: 20k steps in one session, resumed for 20k -> 60k in the next; the replay was not checkpointed)
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python dreamerv3_jax.py --env-id crafter --model-size 1m --batch-size 16 --batch-length 32 --train-ratio 32 \
      --learning-rate "${LR:-3e-4}" --warmup 100 --total-timesteps 60000 --log-every 2000 --checkpoint-every 4000 \
      --no-checkpoint-replay --save-model --eval-episodes 5 --seed 1 --exp-name "dreamerv3_crafter_1m_r32_lr${LR:-3e-4}" "$@"
    ;;
  crafter_debug)
    # the recipe that made hieros_s5_torch.py learn Crafter on one CPU core (benchmark/hieros_crafter.sh): a small model
    # and many cheap updates instead of few expensive ones. 'debug' preset, batch 8 x 32, train ratio 32 (1 update per 8
    # env steps), 4 envs, lr 1e-4 (LR=...), one XLA thread; a THICK run with the same flags is benchmark/thick_crafter.sh debug
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python dreamerv3_jax.py --env-id crafter --model-size debug --batch-size 8 --batch-length 32 --train-ratio 32 \
      --num-envs 4 --learning-rate "${LR:-1e-4}" --warmup 100 --total-timesteps 200000 --log-every 2000 \
      --checkpoint-every 10000 --save-model --eval-episodes 5 --seed 1 --exp-name "dreamerv3_crafter_debug_lr${LR:-1e-4}" "$@"
    ;;
  plot)
    python benchmark/plot_curves.py --runs "runs/CartPole-v1__dreamerv3_cartpole_debug__1__*" \
      "runs/CartPole-v1__dreamerv3_cartpole_debug__2__*" --labels "seed 1" "seed 2" \
      --out benchmark/results/dreamerv3_cartpole.png --title "dreamerv3_jax.py, CartPole-v1 (debug)" --baseline 22.3
    python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_1m__*" \
      "runs/crafter__dreamerv3_crafter_1m_r32_lr3e-4__*" "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__1__*" \
      "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__2__*" \
      --labels "ratio 16, lr 1e-4" "ratio 32, lr 3e-4" "ratio 32, lr 1e-4" "ratio 32, lr 1e-4, seed 2" --smooth 20 --bin 4000 \
      --out benchmark/results/dreamerv3_crafter.png --title "dreamerv3_jax.py, Crafter, 1m, batch 16x32" --baseline 1.37 \
      > benchmark/results/dreamerv3_crafter.json
    # success rates and score of the training episodes per 12k-step window, against the random policy's
    python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__1__*" --window 12000 \
      --random benchmark/results/crafter_random.json > benchmark/results/dreamerv3_crafter_windows.json
    python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__2__*" --window 12000 \
      --random benchmark/results/crafter_random.json > benchmark/results/dreamerv3_crafter_windows_seed2.json
    python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_1m_r32_lr3e-4__*" \
      "runs/crafter__thick_crafter_1m_r32__*" --labels "DreamerV3 1m, lr 3e-4" "THICK 1m, lr 3e-4, beta 1" --smooth 20 \
      --bin 4000 --out benchmark/results/crafter_1m_r32_lr3e-4.png --title "Crafter, 1m, batch 16x32, train ratio 32, lr 3e-4" \
      --baseline 1.37 > benchmark/results/crafter_1m_r32_lr3e-4.json
    ;;
  plot_debug)
    # the debug-size Crafter runs of DreamerV3 and THICK (same flags, same budget, one core each)
    python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_debug_lr1e-4__1__*" \
      "runs/crafter__thick_crafter_debug_lr1e-4_beta100__1__*" --labels "DreamerV3 debug" "THICK debug, beta 100" \
      --smooth 20 --bin 4000 --out benchmark/results/crafter_debug.png --baseline 1.37 \
      --title "Crafter, debug preset, batch 8x32, ratio 32, lr 1e-4, 4 envs" > benchmark/results/crafter_debug.json
    python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_debug_lr1e-4__1__*" --window 8000 \
      --random benchmark/results/crafter_random.json > benchmark/results/dreamerv3_crafter_debug_windows.json
    python benchmark/crafter_window.py "runs/crafter__thick_crafter_debug_lr1e-4_beta100__1__*" --window 8000 \
      --random benchmark/results/crafter_random.json > benchmark/results/thick_crafter_debug_windows.json
    ;;
  plot_ent)
    # the crafter_debug run (entropy bonus 3e-4, the spec's) against 1e-3 and 3e-3 (one core each, 2 h each)
    python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_debug_lr1e-4__1__*" \
      "runs/crafter__dreamerv3_crafter_debug_ent1e-3__1__*" "runs/crafter__dreamerv3_crafter_debug_ent3e-3__1__*" \
      --labels "entropy 3e-4 (default)" "entropy 1e-3" "entropy 3e-3" --smooth 20 --bin 4000 --baseline 1.37 \
      --out benchmark/results/dreamerv3_crafter_debug_entropy.png \
      --title "dreamerv3_jax.py, Crafter, debug, batch 8x32, ratio 32, lr 1e-4" > benchmark/results/dreamerv3_crafter_debug_entropy.json
    for e in 1e-3 3e-3; do
      python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_debug_ent${e}__1__*" --window 8000 \
        --random benchmark/results/crafter_random.json > "benchmark/results/dreamerv3_crafter_debug_ent${e}_windows.json"
    done
    ;;
  plot_rew)
    # per-group lrs (model 3e-4, actor and critic 1e-4: the HIEROS recipe's rates) with and without --reward-scale 10,
    # against the crafter_debug run (one lr 1e-4); one core each. The checkpoints are diagnosed by imagined_reward.py.
    python benchmark/plot_curves.py --runs "runs/crafter__dreamerv3_crafter_debug_lr1e-4__1__*" \
      "runs/crafter__dreamerv3_crafter_debug_wm3e-4_ac1e-4__1__*" "runs/crafter__dreamerv3_crafter_debug_wm3e-4_ac1e-4_rew10__1__*" \
      --labels "lr 1e-4 (all)" "model 3e-4, actor/critic 1e-4" "same + reward scale 10" --smooth 20 --bin 4000 --baseline 1.37 \
      --out benchmark/results/dreamerv3_crafter_debug_rew.png \
      --title "dreamerv3_jax.py, Crafter, debug, batch 8x32, ratio 32" > benchmark/results/dreamerv3_crafter_debug_rew.json
    for e in wm3e-4_ac1e-4 wm3e-4_ac1e-4_rew10; do
      python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_debug_${e}__1__*" --window 8000 \
        --random benchmark/results/crafter_random.json > "benchmark/results/dreamerv3_crafter_debug_${e}_windows.json"
    done
    ;;
  plot_flat)
    # optimizer epsilon 1e-5 (Adam-like: the actor's tiny gradients then move it at a fraction of the lr) and the flat
    # HIEROS agent (S5 world model, AdamW, --max-hierarchy 1) with the crafter_debug budget; one core each, ~1.5 h each
    RUNS=("runs/crafter__dreamerv3_crafter_debug_eps1e-5__1__*" "runs/crafter__dreamerv3_crafter_debug_wm3e-4_ac1e-4_eps1e-5__1__*"
          "runs/crafter__hieros_crafter_L1__1__*")
    LABELS=("DreamerV3, lr 1e-4, eps 1e-5" "DreamerV3, model 3e-4, actor/critic 1e-4, eps 1e-5" "HIEROS flat (1 level)")
    python benchmark/plot_curves.py --runs "${RUNS[@]}" --labels "${LABELS[@]}" --smooth 20 --bin 4000 --baseline 1.37 \
      --out benchmark/results/crafter_debug_flat.png --title "Flat agents, Crafter, debug, batch 8x32, ratio 32" \
      > benchmark/results/crafter_debug_flat.json
    python benchmark/plot_curves.py --runs "${RUNS[@]}" --labels "${LABELS[@]}" --tag losses/entropy losses/entropy_L0 \
      --smooth 1 --out benchmark/results/crafter_debug_flat_entropy.png --title "Actor entropy (nats)" > /dev/null
    for e in dreamerv3_crafter_debug_eps1e-5 dreamerv3_crafter_debug_wm3e-4_ac1e-4_eps1e-5 hieros_crafter_L1; do
      python benchmark/crafter_window.py "runs/crafter__${e}__1__*" --window 8000 \
        --random benchmark/results/crafter_random.json > "benchmark/results/${e}_windows.json"
    done
    ;;
  plot_1m_b8)
    # the crafter_debug recipe at the 1m preset (32 latents, deter 512; same 4-stage CNN), two seeds, one core each:
    #   bash benchmark/dreamerv3_learning.sh crafter_debug --model-size 1m --seed {1,2} --exp-name dreamerv3_crafter_1m_b8
    RUNS=("runs/crafter__dreamerv3_crafter_1m_b8__1__*" "runs/crafter__dreamerv3_crafter_1m_b8__2__*")
    LABELS=("DreamerV3 1m, batch 8x32, seed 1" "DreamerV3 1m, batch 8x32, seed 2")
    python benchmark/plot_curves.py --runs "${RUNS[@]}" --labels "${LABELS[@]}" --smooth 20 --bin 4000 --baseline 1.37 \
      --out benchmark/results/dreamerv3_crafter_1m_b8.png --title "DreamerV3, Crafter, 1m, batch 8x32, ratio 32, lr 1e-4" \
      > benchmark/results/dreamerv3_crafter_1m_b8.json
    python benchmark/plot_curves.py --runs "${RUNS[@]}" --labels "${LABELS[@]}" --tag losses/entropy --smooth 1 \
      --out benchmark/results/dreamerv3_crafter_1m_b8_entropy.png --title "Actor entropy (nats)" > /dev/null
    for s in 1 2; do
      python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_1m_b8__${s}__*" --window 8000 \
        --random benchmark/results/crafter_random.json > "benchmark/results/dreamerv3_crafter_1m_b8_s${s}_windows.json"
    done
    ;;
esac
