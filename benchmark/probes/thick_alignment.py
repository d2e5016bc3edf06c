"""Event alignment of a trained THICK agent on Crafter: do its context changes sit at inventory changes and unlocks?

    python benchmark/probes/thick_alignment.py runs/crafter__thick_crafter_1m_r32__1__<t>/checkpoint.ckpt --steps 3000

Loads a saved model or checkpoint of thick_dreamer_jax.py, lets its policy act in Crafter (one env, sampled actions),
and records per step whether any context gate opened (the acting C-RSSM step, i.e. the change that produced c_t) and
whether the inventory changed or an achievement was unlocked on arriving at o_t. Reports, with gate noise on (as while
training) and off (the deterministic gates): the change rate, and the precision / recall of changes vs events within
+-1 step against the base rate (the fraction of all steps with an event within +-1 step). A lift (precision / base rate)
above 1 means that context changes concentrate at events. Writes <out>.json and prints the table.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from saved_agent import load_agent  # noqa: E402
from thick_sparsity import alignment  # noqa: E402

import common  # noqa: E402


def rollout(agent, params, steps: int, seed: int, noise: float):
    """Act for `steps` steps in one Crafter env; returns changed, event, is_first (steps,) bool arrays and the returns."""
    env = common.make_env("crafter", seed, 0, False, "alignment")()
    obs, info = env.reset(seed=seed)
    inv, ach = dict(info["inventory"]), {}
    carry, key = agent.initial_carry(1), jax.random.PRNGKey(seed)
    changed, event, first, returns, ret, is_first, ev = [], [], [], [], 0.0, True, False
    for _ in range(steps):
        key, k = jax.random.split(key)
        action, carry, _, ch = agent.policy_step(params, carry, obs[None], np.array([is_first]), k, noise)
        changed.append(bool(np.asarray(ch)[0]))
        event.append(ev)
        first.append(is_first)
        obs, reward, terminated, truncated, info = env.step(int(np.argmax(np.asarray(action)[0])))
        ret += float(reward)
        new_inv = dict(info["inventory"])
        new_ach = dict(env.unwrapped._env._player.achievements)  # unlock counts so far
        ev = new_inv != inv or any(v > ach.get(k_, 0) for k_, v in new_ach.items())
        inv, ach, is_first = new_inv, new_ach, False
        if terminated or truncated:
            returns.append(ret)
            obs, info = env.reset()
            inv, ach, ret, is_first, ev = dict(info["inventory"]), {}, 0.0, True, False
    env.close()
    return np.array(changed), np.array(event), np.array(first), returns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_path", help="a .cleanrl_model or checkpoint.ckpt written by thick_dreamer_jax.py")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="runs/probes/thick_alignment", help="<out>.json")
    a = ap.parse_args()
    _, agent, params, args = load_agent(a.model_path, scripts=("thick_dreamer_jax",))
    results = {"model_path": a.model_path, "steps": a.steps, "sparse_scale": args.sparse_scale,
               "model_size": args.model_size}  # fmt: skip
    for name, noise in (("noise_on", 1.0), ("noise_off", 0.0)):
        t0 = time.time()
        changed, event, first, returns = rollout(agent, params, a.steps, a.seed, noise)
        rec = {"change_rate": float(changed[~first].mean()), "event_rate": float(event[~first].mean()),
               "alignment": alignment(changed, event, first), "episodes": len(returns),
               "mean_return": float(np.mean(returns)) if returns else None, "seconds": round(time.time() - t0)}  # fmt: skip
        print(name, json.dumps(rec), flush=True)
        results[name] = rec
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| gate noise | change rate | event rate | precision +-1 | recall +-1 | base rate | lift |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("noise_on", "noise_off"):
        r, al = results[name], results[name]["alignment"]
        lines.append(f"| {name[6:]} | {r['change_rate']:.3f} | {r['event_rate']:.3f} | {al['precision']:.3f} | "
                     f"{al['recall']:.3f} | {al['base_rate']:.3f} | {al['lift']:.2f} |")  # fmt: skip
    print(f"{a.model_path} (beta {args.sparse_scale}, {a.steps} steps)\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
