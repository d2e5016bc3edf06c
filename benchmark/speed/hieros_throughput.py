"""Throughput of hieros_s5_torch.py on random data: seconds per update of each level, the amortised cost of one
train call (level 0 every call, level L every 4^L-th), the policy step, and the peak RSS of the process.

Reports wall seconds and CPU seconds (process_time) per update: on a shared, overloaded machine the wall time mostly
measures the other processes; with 1 thread the CPU time approximates the cost on a dedicated core.
One configuration per process (peak RSS is per process):
    OMP_NUM_THREADS=2 python benchmark/speed/hieros_throughput.py --size paper --levels 3 --batch 16 --length 64
    python benchmark/speed/hieros_throughput.py --size debug --levels 1 --batch 16 --length 64 --bf16
Appends one JSON line to benchmark/results/hieros_throughput.jsonl.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import time

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
import hieros_s5_torch as h  # noqa: E402


def rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def random_batch(level, b, t, obs_space):
    spec = h.replay_spec(level, obs_space)
    out = {}
    for k, (shape, dtype) in spec.items():
        if dtype == np.uint8:
            out[k] = torch.randint(0, 256, (b, t, *shape), dtype=torch.uint8)
        elif dtype is bool:
            out[k] = torch.zeros(b, t, dtype=torch.bool)
        else:
            out[k] = torch.randn(b, t, *shape)
    out["action"] = torch.nn.functional.one_hot(torch.randint(0, level.act_dim, (b, t)), level.act_dim).float()
    out["is_first"][:, 0] = True
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="paper")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--updates", type=int, default=3, help="timed updates per level (after 1 warm-up)")
    p.add_argument("--policy-steps", type=int, default=256)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the world-model loss (the script's --compile)")
    p.add_argument("--threads", type=int, default=1, help="1: CPU-seconds then approximate a dedicated core")
    p.add_argument("--out", default="benchmark/results/hieros_throughput.jsonl")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    args = h.Args(model_size=a.size, max_hierarchy=a.levels, batch_size=a.batch, batch_length=a.length,
                  imag_horizon=a.horizon, bf16_autocast=a.bf16)  # fmt: skip
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(6)
    agent = h.Agent(obs_space, act_space, args)
    params = sum(p.numel() for p in agent.parameters())
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
    loss_fn = torch.compile(h.wm_loss) if a.compile else h.wm_loss  # compiled during the untimed warm-up update
    per_level, cpu_level = [], []
    for i, lv in enumerate(agent.levels):
        opts, sched = h.make_optimizers(lv, args)
        batch = random_batch(lv, a.batch, a.length, obs_space)
        times, cpu = [], []
        for k in range(a.updates + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            h.train_level(lv, opts, sched, batch, args, loss_fn, autocast)
            if k:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        per_level.append(float(np.median(times)))
        cpu_level.append(float(np.median(cpu)))
        print(
            f"level {i}: {per_level[-1]:.3f} s/update wall, {cpu_level[-1]:.3f} CPU-s (peak RSS {rss_gib():.2f} GiB)",
            flush=True,
        )
    amortised = sum(t / 4**i for i, t in enumerate(per_level))
    amortised_cpu = sum(t / 4**i for i, t in enumerate(cpu_level))
    agent.eval()
    runner = h.HierarchyRunner(agent, 1, args, torch.device("cpu"))
    obs = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    zero, first = torch.zeros(1), torch.zeros(1, dtype=torch.bool)
    for _ in range(16):
        runner.step(obs, zero, first, first)
    steps = a.policy_steps
    t0, c0 = time.perf_counter(), time.process_time()
    with autocast() if a.bf16 else contextlib.nullcontext():
        for _ in range(steps):
            runner.step(obs, zero, first, first)
    policy, policy_cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    res = dict(size=a.size, levels=a.levels, batch=a.batch, length=a.length, horizon=a.horizon, bf16=a.bf16,
               compile=a.compile,
               threads=torch.get_num_threads(), params_m=params / 1e6, s_per_update_level=per_level,
               s_per_train_call=amortised, cpu_s_per_update_level=cpu_level,
               cpu_s_per_train_call=amortised_cpu, policy_step_ms=policy * 1e3, policy_step_cpu_ms=policy_cpu * 1e3,
               peak_rss_gib=rss_gib(),
               torch=torch.__version__, device="cpu", loadavg_1min=os.getloadavg()[0], cpus=os.cpu_count())  # fmt: skip
    print(json.dumps(res))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
