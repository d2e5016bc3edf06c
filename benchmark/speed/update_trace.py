"""Seconds per network part of one jitted train step, from a jax.profiler trace (Crafter shapes, random data), for
dreamerv3_jax.py or thick_dreamer_jax.py; the two outputs side by side show where THICK's extra time goes.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmark/speed/update_trace.py --script thick_dreamer_jax --model-size 12m [--ops 30]

Each XLA op is attributed to the Flax module in its JAX source name (fwd = forward, bwd = the transposed/backward
pass; ops inside a lax.scan are 'while/<method>'). Both decoders of THICK are the class Decoder, so they share a row.
"""

import argparse
import collections
import glob
import importlib
import os
import re
import sys
import tempfile
import time

import gymnasium as gym
import jax
import numpy as np
from jax.profiler import ProfileData

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from random_batch import crafter_batch  # noqa: E402  (benchmark/speed/random_batch.py)


def category(op: str) -> str:
    op = op.replace("jit(_train_step)/", "")
    m = re.search(r"jvp\((\w+)\)", op)
    part = m.group(1) if m else op.split("/")[-1][:30]
    if "while" in op:
        part = "while" + ("/" + op.split("closed_call/")[-1].split("/")[0] if "closed_call/" in op else "")
    return ("bwd " if "transpose(" in op else "fwd ") + part


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", default="thick_dreamer_jax", choices=["dreamerv3_jax", "thick_dreamer_jax"])
    ap.add_argument("--model-size", default="12m")
    ap.add_argument("--rows", type=int, default=15, help="parts to print")
    ap.add_argument("--ops", type=int, default=0, help="also print the N slowest single ops")
    ap.add_argument("--match", default="", help="only list single ops whose JAX op name matches this regex")
    a = ap.parse_args()
    mod = importlib.import_module(a.script)
    args = mod.Args(env_id="crafter", model_size=a.model_size, batch_size=16, batch_length=64)
    agent = mod.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    state = agent.init(jax.random.PRNGKey(0))
    batch = crafter_batch(agent, 16, 64)
    step = jax.jit(agent._train_step).lower(state, batch, jax.random.PRNGKey(1)).compile()
    meta = {}  # HLO instruction -> (result shape, JAX source op name)
    for line in step.as_text().splitlines():
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"', line)
        if m:
            meta[m.group(1)] = (m.group(2), m.group(3))
    jax.block_until_ready(step(state, batch, jax.random.PRNGKey(2)))  # warm-up
    t0 = time.time()
    jax.block_until_ready(step(state, batch, jax.random.PRNGKey(3)))
    print(f"{a.script} {a.model_size}: one update {time.time() - t0:.1f} s (untraced)")
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        jax.block_until_ready(step(state, batch, jax.random.PRNGKey(4)))
        jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0])
    seconds = collections.Counter()
    for plane in data.planes:
        for ln in plane.lines:
            for ev in ln.events:
                if ev.name in meta:
                    seconds[ev.name] += ev.duration_ns / 1e9
    parts = collections.Counter()
    for name, sec in seconds.items():
        parts[category(meta[name][1])] += sec
    print(f"traced op time {sum(seconds.values()):.1f} s; per part:")
    for part, sec in parts.most_common(a.rows):
        print(f"  {sec:7.2f} s  {part}")
    listed = [(n, s) for n, s in seconds.most_common() if re.search(a.match, meta[n][1])][: a.ops]
    for name, sec in listed:
        shape, op = meta[name]
        print(f"  {sec:7.3f} s  {shape.split('{')[0]:28s} {op[-80:]}")


if __name__ == "__main__":
    main()
