"""Episodic return (and, for Crafter, the score) of the uniform random policy: the baseline of the learning plots.

    python benchmark/random_baseline.py --env-id crafter --episodes 50
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env-id", default="crafter")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    env = common.make_env(a.env_id, a.seed, 0, False, "random")()
    rng, returns, episodes_ach = np.random.default_rng(a.seed), [], []
    for ep in range(a.episodes):
        env.reset(seed=a.seed + ep)
        done, ret = False, 0.0
        while not done:
            _, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
            ret, done = ret + float(r), term or trunc
        returns.append(ret)
        if "achievements" in info:  # Crafter: unlock counts of the finished episode
            episodes_ach.append(info["achievements"])
    out = {"env_id": a.env_id, "episodes": a.episodes, "return_mean": round(float(np.mean(returns)), 3),
           "return_std": round(float(np.std(returns)), 3),
           "return_se": round(float(np.std(returns, ddof=1) / np.sqrt(len(returns))), 3)}  # fmt: skip
    if episodes_ach:
        rates = common.crafter_success_rates(episodes_ach)
        out["crafter_score"] = round(common.crafter_score(rates), 3)
        out["rates"] = {k: round(float(r), 1) for k, r in zip(common.CRAFTER_ACHIEVEMENTS, rates, strict=True) if r > 0}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
