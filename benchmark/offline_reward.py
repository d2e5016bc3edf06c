"""Can the world model of dreamerv3_jax.py learn Crafter's rewards from a fixed replay, and how fast? (offline study)

    python benchmark/offline_reward.py runs/<run>/checkpoint.ckpt.replay.npz --model-size debug --updates 2000 \
        --eval-every 250 [--reward-scale 10] [--learning-rate 3e-4] > out.jsonl

Trains a fresh agent (the whole train step of the script: world model, actor, critic) on windows of a stored replay,
never acting, and every --eval-every updates measures on held-out windows (the last --holdout steps of each env) what
benchmark/imagined_reward.py measures on a run: the reward head's prediction at the steps where an achievement was
unlocked, on the posterior (the model sees the outcome) and one imagined step ahead with the action that was taken
(what the actor's returns are built from). Windows start from zeros (--replay-context 0): the stored latents belong to
the model that wrote the replay. One JSON line per evaluation.
"""

import argparse
import json
import os
import sys
import time

import gymnasium as gym
import jax
import numpy as np
from imagined_reward import diagnose, load_replay, windows  # benchmark/imagined_reward.py (this script's folder)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dreamerv3_jax as D  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("replay")
    ap.add_argument("--model-size", default="debug")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-length", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--actor-lr", type=float, default=None)
    ap.add_argument("--critic-lr", type=float, default=None)
    ap.add_argument("--reward-scale", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--holdout", type=int, default=8000, help="the last N steps of each env are only evaluated on")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    args = D.check_args(D.Args(env_id="crafter", model_size=a.model_size, batch_size=a.batch_size, batch_length=a.batch_length,
                               learning_rate=a.learning_rate, actor_lr=a.actor_lr, critic_lr=a.critic_lr,
                               reward_scale=a.reward_scale, warmup=a.warmup, replay_context=0,
                               total_timesteps=10**6))  # fmt: skip
    agent = D.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    state = agent.init(jax.random.PRNGKey(a.seed))
    data, count, pos, cap = load_replay(a.replay)
    held = int(np.minimum(count, cap).min())
    train_end = held - a.holdout
    rng = np.random.default_rng(a.seed)
    L = a.batch_length + 1
    evalset = windows(data, count, pos, cap, a.eval_windows, L, np.random.default_rng(1000), first=train_end)
    key, t0 = jax.random.PRNGKey(a.seed + 1), time.time()
    config = {k: v for k, v in vars(a).items() if k != "replay"} | {"replay": a.replay, "train_steps": train_end}
    for u in range(1, a.updates + 1):
        batch = windows(data, count, pos, cap, a.batch_size, L, rng, first=0, last=train_end)
        key, k = jax.random.split(key)
        state, metrics, _ = agent.train_step(state, batch, k)
        if u % a.eval_every == 0 or u == a.updates:
            out = diagnose(D, agent, state.params, evalset, seed=0, zero_start=True)
            do = out["actions"]["do"]
            print(json.dumps({"updates": u, "seconds": round(time.time() - t0, 1), **out["events"],
                              "do_data": do["data"], "do_model": do["model"],
                              "wm_reward": round(float(metrics["losses/wm_reward"]) / a.reward_scale, 4),
                              "wm_recon": round(float(metrics["losses/wm_recon"]), 1), "config": config}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
