"""Action frequencies of a saved Crafter policy (dreamerv3_jax.py or thick_dreamer_jax.py): what the actor committed to.

    python benchmark/probes/action_freq.py runs/<run>/checkpoint.ckpt --steps 1500

Loads a `.cleanrl_model` or `checkpoint.ckpt`, acts with the sampled policy in one Crafter env and prints the frequency
of each of the 17 actions (uniform: 0.059 each) and the returns of the episodes that finished.
"""

import argparse
import json
import os
import sys

import gymnasium as gym
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from saved_agent import load_agent  # noqa: E402  (benchmark/probes/saved_agent.py)

import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_path")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    mod, agent, params, _ = load_agent(a.model_path)
    envs = gym.vector.SyncVectorEnv([common.make_env("crafter", a.seed, 0, False, "action_freq")])
    names = envs.envs[0].unwrapped._env.action_names  # crafter's 17 actions, in its order
    extra = (1.0,) if mod.__name__ == "thick_dreamer_jax" else ()  # THICK: gate noise on, as while training
    key, (obs, _), flags = jax.random.PRNGKey(a.seed), envs.reset(seed=a.seed), common.EpisodeFlags(1)
    is_first, carry, counts, episodes = flags.reset(), agent.initial_carry(1), np.zeros(len(names)), []
    for _ in range(a.steps):
        key, k = jax.random.split(key)
        action, carry = agent.policy_step(params, carry, obs, is_first, k, *extra)[:2]
        env_action = mod.to_env_action(agent, np.asarray(action))
        counts[env_action[0]] += 1
        obs, _, term, trunc, infos = envs.step(env_action)
        is_first, _, _ = flags.step(term, trunc)
        episodes += common.episode_stats(infos)
    freq = {n: round(float(c), 3) for n, c in zip(names, counts / counts.sum(), strict=True)}
    print(json.dumps({"model_path": a.model_path, "steps": a.steps, "action_freq": freq,
                      "episode_returns": [round(e["r"], 1) for e in episodes]}))  # fmt: skip


if __name__ == "__main__":
    main()
