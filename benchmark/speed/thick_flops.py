"""XLA's FLOP estimate of one train step, dreamerv3_jax.py vs thick_dreamer_jax.py at the same size (no compilation:
the cost analysis of the lowered program), Crafter shapes.

    python benchmark/speed/thick_flops.py --model-size 12m --batch-size 16 --batch-length 64
Appends to benchmark/results/thick_flops.jsonl.
"""

import argparse
import importlib
import json
import os
import sys
import time

import gymnasium as gym
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root


def flops(script, size, B, T, **extra):
    mod = importlib.import_module(script)
    args = mod.Args(env_id="crafter", model_size=size, batch_size=B, batch_length=T, **extra)
    agent = mod.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    state = jax.eval_shape(agent._init, jax.random.PRNGKey(0))
    L = T + 1
    batch = {"obs": jax.ShapeDtypeStruct((B, L, 64, 64, 3), np.uint8), "action": jax.ShapeDtypeStruct((B, L, 17), np.float32),
             "reward": jax.ShapeDtypeStruct((B, L), np.float32), "is_first": jax.ShapeDtypeStruct((B, L), bool),
             "is_last": jax.ShapeDtypeStruct((B, L), bool), "is_terminal": jax.ShapeDtypeStruct((B, L), bool),
             "deter": jax.ShapeDtypeStruct((B, L, agent.deter), np.float16),
             "stoch": jax.ShapeDtypeStruct((B, L, agent.stoch), np.uint8)}  # fmt: skip
    if hasattr(agent, "ctx"):
        batch["context"] = jax.ShapeDtypeStruct((B, L, agent.ctx), np.float32)
    lowered = jax.jit(agent._train_step).lower(state, batch, jax.random.PRNGKey(1))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "script": script,
        "model_size": size,
        "batch": [B, T],
        "params": params,
        "gflop": round(cost["flops"] / 1e9, 1),
    } | extra


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-size", default="12m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-length", type=int, default=64)
    ap.add_argument("--coarse-dec-depth", type=int, default=0, help="THICK's --coarse-dec-depth (0 = the model's depth)")
    a = ap.parse_args()
    shape = (a.model_size, a.batch_size, a.batch_length)
    recs = [flops("dreamerv3_jax", *shape), flops("thick_dreamer_jax", *shape, coarse_dec_depth=a.coarse_dec_depth)]
    recs[1]["ratio_vs_dreamerv3"] = round(recs[1]["gflop"] / recs[0]["gflop"], 3)
    os.makedirs("benchmark/results", exist_ok=True)
    with open("benchmark/results/thick_flops.jsonl", "a") as f:
        for r in recs:
            r["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r))


if __name__ == "__main__":
    main()
