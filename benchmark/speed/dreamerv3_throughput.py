"""Throughput of dreamerv3_jax.py: median time per train update and per policy step, peak memory, achieved FLOP/s.

Each configuration runs in its own subprocess so that peak RSS is per configuration. Crafter-shaped inputs (64x64x3,
17 actions), batch B x T, random data (speed does not depend on the values).

    python benchmark/speed/dreamerv3_throughput.py --sizes debug 12m --dtypes float32 bfloat16 \
        --out benchmark/results/dreamerv3_throughput.json
    python benchmark/speed/dreamerv3_throughput.py --script thick_dreamer_jax.py ...   # the same for THICK (same Agent API)
"""

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from random_batch import crafter_batch  # noqa: E402  (benchmark/speed/random_batch.py)


def matmul_rate(jax, jnp, n=2048, reps=5):
    """float32 matmul rate of XLA on this machine, measured in the same process (GFLOP/s)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def cpu_seconds():
    """User + system CPU time of this process (all threads): a load-independent measure of the work done."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(script, size, dtype, batch, length, updates, policy_steps):
    import gymnasium as gym
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, ROOT)
    mod = importlib.import_module(script.removesuffix(".py"))
    args = mod.check_args(mod.Args(env_id="crafter", model_size=size, compute_dtype=dtype, batch_size=batch,
                                   batch_length=length, total_timesteps=10**6))  # fmt: skip
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17)
    agent = mod.Agent(args, obs_space, act_space)
    state = agent.init(jax.random.PRNGKey(0))
    batch_data = crafter_batch(agent, batch, length)
    t = time.perf_counter()
    lowered = agent.train_step.lower(state, batch_data, jax.random.PRNGKey(0))
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    times, cpu = [], []
    for i in range(updates + 1):
        t, c = time.perf_counter(), cpu_seconds()
        state, metrics, _ = agent.train_step(state, batch_data, jax.random.PRNGKey(i))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
        cpu.append(cpu_seconds() - c)
    update_s = float(np.median(times[1:]))
    carry, obs = agent.initial_carry(1), batch_data["obs"][:1, 0]
    first = np.zeros(1, bool)
    ptimes = []
    for i in range(policy_steps + 1):
        t = time.perf_counter()
        action, carry = agent.policy_step(state.params, carry, obs, first, jax.random.PRNGKey(i))[:2]  # THICK returns more
        np.asarray(action)
        ptimes.append(time.perf_counter() - t)
    rate = matmul_rate(jax, jnp)
    return {
        "script": script, "size": size, "dtype": dtype, "batch": f"{batch}x{length}", "device": jax.devices()[0].platform,
        "jax": jax.__version__, "params": mod.count_params(state.params), "compile_s": round(compile_s, 1),
        "update_s": round(update_s, 3), "update_cpu_s": round(float(np.median(cpu[1:])), 3),
        "load_avg_1m": os.getloadavg()[0], "updates_timed": updates,
        "policy_step_ms": round(1e3 * float(np.median(ptimes[1:])), 2),
        "flop_per_update": flops, "gflops_achieved": round(flops / update_s / 1e9, 1),
        "matmul_gflops": round(rate, 1), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }  # fmt: skip


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--script", default="dreamerv3_jax.py")
    p.add_argument("--sizes", nargs="+", default=["debug", "12m"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--policy-steps", type=int, default=50)
    p.add_argument("--out", default=None)
    p.add_argument("--one", nargs=2, metavar=("SIZE", "DTYPE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:  # child process: one configuration
        print(json.dumps(measure(a.script, a.one[0], a.one[1], a.batch, a.length, a.updates, a.policy_steps)))
        return
    rows = []
    for size in a.sizes:
        for dtype in a.dtypes:
            cmd = [sys.executable, __file__, "--script", a.script, "--one", size, dtype, "--batch", str(a.batch),
                   "--length", str(a.length), "--updates", str(a.updates), "--policy-steps", str(a.policy_steps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
