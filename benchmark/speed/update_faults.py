"""Where the system time of a JAX update goes on the CPU: wall, user and system seconds, minor page faults and peak RSS
of each of a few jitted train-step calls (Crafter shapes, random data), for dreamerv3_jax.py or thick_dreamer_jax.py.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmark/speed/update_faults.py --script dreamerv3_jax --model-size 12m        # one line per update
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmark/speed/update_faults.py ...            # transparent huge pages
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
        MALLOC_CONF="narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1" python benchmark/speed/update_faults.py ...   # jemalloc

XLA:CPU allocates each execution's temporary buffer with posix_memalign; glibc serves a block that large with a fresh
mmap and returns it with munmap when the call ends (`strace -f -e trace=mmap,munmap` shows one 2.7 GiB mmap/munmap
pair per update at the 1m preset), so every update first-touches its whole working set again: one minor page fault per
4 KiB page, paid as system time. Results are appended to benchmark/results/update_faults.jsonl.
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
    ap.add_argument("--script", default="dreamerv3_jax", choices=["dreamerv3_jax", "thick_dreamer_jax"])
    ap.add_argument("--model-size", default="12m")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-length", type=int, default=64)
    ap.add_argument("--updates", type=int, default=4, help="train-step calls; the first one also warms up")
    ap.add_argument("--out", default="benchmark/results/update_faults.jsonl")
    a = ap.parse_args()
    mod = importlib.import_module(a.script)
    args = mod.Args(env_id="crafter", model_size=a.model_size, batch_size=a.batch_size, batch_length=a.batch_length)
    agent = mod.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    state = agent.init(jax.random.PRNGKey(0))
    batch = crafter_batch(agent, a.batch_size, a.batch_length)
    step = jax.jit(agent._train_step, donate_argnums=0).lower(state, batch, jax.random.PRNGKey(1)).compile()
    rows = []
    for i in range(a.updates):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        state, _, _ = step(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(state.params)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        rows.append({"wall_s": round(time.time() - t0, 2), "user_s": round(r1.ru_utime - r0.ru_utime, 1),
                     "sys_s": round(r1.ru_stime - r0.ru_stime, 1), "minor_faults": r1.ru_minflt - r0.ru_minflt,
                     "peak_rss_gib": round(r1.ru_maxrss / 2**20, 2)})  # fmt: skip
        print(a.script, a.model_size, f"update {i}:", rows[-1], flush=True)
    rec = {"script": a.script, "model_size": a.model_size, "batch": [a.batch_size, a.batch_length], "updates": rows,
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
           "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""), "MALLOC_CONF": os.environ.get("MALLOC_CONF", ""),
           "load_avg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "jax": jax.__version__}  # fmt: skip
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
