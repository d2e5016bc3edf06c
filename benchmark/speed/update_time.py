"""Update time, compile time and peak memory of one jitted train step: thick_dreamer_jax.py vs dreamerv3_jax.py.

Run one script per process (peak RSS is per process), e.g.
    python benchmark/speed/update_time.py --script dreamerv3_jax --model-size 12m --batch-size 8 --updates 3
    python benchmark/speed/update_time.py --script thick_dreamer_jax --model-size 12m --batch-size 8 --updates 3
Each appends one JSON line to benchmark/results/thick_update_time.jsonl. Crafter-shaped inputs (64x64x3, 17 actions),
random data (the update cost does not depend on the values).
"""

import argparse
import importlib
import json
import os
import resource
import sys
import time

import gymnasium as gym
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from random_batch import crafter_batch  # noqa: E402  (benchmark/speed/random_batch.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", default="thick_dreamer_jax", choices=["thick_dreamer_jax", "dreamerv3_jax"])
    ap.add_argument("--model-size", default="12m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-length", type=int, default=64)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--coarse-dec-depth", type=int, default=0, help="THICK only: coarse decoder depth (0: the fine one's)")
    ap.add_argument("--out", default="benchmark/results/thick_update_time.jsonl")
    a = ap.parse_args()
    mod = importlib.import_module(a.script)
    args = mod.Args(env_id="crafter", model_size=a.model_size, batch_size=a.batch_size, batch_length=a.batch_length)
    if a.coarse_dec_depth:
        args.coarse_dec_depth = a.coarse_dec_depth
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17)
    agent = mod.Agent(args, obs_space, act_space)
    state = agent.init(jax.random.PRNGKey(0))
    batch = crafter_batch(agent, a.batch_size, a.batch_length)
    t0 = time.time()
    step = jax.jit(agent._train_step, donate_argnums=0).lower(state, batch, jax.random.PRNGKey(1)).compile()
    compile_s = time.time() - t0
    times = []
    for i in range(a.updates + 1):  # the first call is a warm-up
        t0 = time.time()
        state, metrics, _ = step(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(state.params)
        times.append(time.time() - t0)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    name = a.script + (f" --coarse-dec-depth {a.coarse_dec_depth}" if a.coarse_dec_depth else "")
    rec = {"script": name, "model_size": a.model_size, "batch": [a.batch_size, a.batch_length], "params": params,
           "compile_s": round(compile_s, 1), "update_s": [round(t, 2) for t in times[1:]],
           "update_s_median": round(float(np.median(times[1:])), 2), "peak_rss_gib": round(rss_gib, 2),
           "load_avg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "jax": jax.__version__,
           "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
           "malloc_conf": os.environ.get("MALLOC_CONF", "")}  # fmt: skip
    print(json.dumps(rec))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
