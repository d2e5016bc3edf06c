"""The parts of benchmark/gpu_check.sh: one accelerator check of the three scripts, each part in its own process.

    python benchmark/speed/gpu_probe.py check [--dry-run] [--out DIR] [--budget S] [--env-seconds S]   # what gpu_check.sh runs
    python benchmark/speed/gpu_probe.py info                                  # devices and versions (one JSON line)
    python benchmark/speed/gpu_probe.py jax-update --script dreamerv3_jax.py  # s/update, policy step, peak device memory
    python benchmark/speed/gpu_probe.py torch-update                          # the same for hieros_s5_torch.py
    python benchmark/speed/gpu_probe.py env-run --script S --seconds W -- ARGS  # env steps per second of the real CLI

Per script (Crafter shapes: 64x64x3 images, 17 actions) `check` measures
  - seconds per update: the median over a few updates on one random Crafter-shaped replay batch (speed does not depend on
    the values) after the compile (JAX) or a warm-up update (torch); HIEROS: per level and per train call (level L trains
    on every 4^L-th call, so a call costs sum_L t_L / 4^L);
  - the policy step: median milliseconds of one acting step for the default 1 env, result on the host;
  - env steps per second: the script's own command line on Crafter at its default train ratio for a fixed wall time,
    read from its progress lines (`step N/M | SPS s | updates U ...`) stamped with their arrival time here: the rate
    between the first line after the first update (compilation and prefill excluded) and the last;
  - peak device memory: JAX device.memory_stats()["peak_bytes_in_use"], torch.cuda.max_memory_allocated() (None on a CPU).
Each part runs under a time limit; the env runs share the time the other parts leave of --budget, so the whole check ends
within it. The JAX scripts' train step is compiled once: the update part fills a persistent compilation cache
(JAX_COMPILATION_CACHE_DIR) that the env run of the same shapes reads.
"""

import argparse
import concurrent.futures
import dataclasses
import importlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository root
JAX_SCRIPTS = ("dreamerv3_jax.py", "thick_dreamer_jax.py")
TORCH_SCRIPT = "hieros_s5_torch.py"
GIB = 2**30
PACKAGES = (
    "jax jaxlib jax-cuda13-plugin jax-cuda12-plugin flax optax torch numpy gymnasium crafter ale-py tyro tensorboard "
    "typing-extensions"
).split()  # the versions named in the JSON

# What each part measures in the real check and in --dry-run (tiny presets on a CPU, for CI).
# JAX: --model-size 12m is the scripts' default, batch 16 x 64 their default; HIEROS: the paper preset, 3 levels, 16 x 64.
SIZES = {
    False: {"jax": dict(size="12m", batch=16, length=64, updates=10, policy_steps=100),
            "torch": dict(size="paper", levels=3, batch=16, length=64, updates=5, policy_steps=100)},
    True: {"jax": dict(size="debug", batch=2, length=8, updates=2, policy_steps=5),
           "torch": dict(size="debug", levels=3, batch=2, length=8, updates=2, policy_steps=5)},
}  # fmt: skip

# Time limits in seconds: (the real check, --dry-run). The update parts include the import, the tracing and the compile;
# the env runs share what the other parts leave of the budget (each at least ENV_MIN_S, else it is skipped), so the
# whole check ends within --budget even if a part hangs. The real check's default budget, 420 s, keeps it under 8 minutes
# with room to spare for a machine's start and a rerun within a 15-minute lease.
# --dry-run: its parts end by themselves (about 70-90 CPU-seconds in all, one chain of a script's parts per core); its
# limits are a safety net only, wide enough for a shared machine under heavy load (a JAX update part took 220 s there).
LIMITS = {"info": (60, 120), "jax-update": (120, 480), "torch-update": (60, 240)}
BUDGET_S = (420, 1200)  # the whole check, gpu_check.sh's setup included
ENV_MIN_S = 30  # the shortest env run worth starting
ENV_DRY_S = 240  # --dry-run: the limit of each env run (32 steps; they end by themselves)
# --dry-run leaves out the env run of thick_dreamer_jax.py: the same env-run code path, the same flags (env_cli) and the
# same progress line as dreamerv3_jax.py's (the parse of THICK's longer line: tests/test_gpu_check.py), for 15-35 CPU-s
DRY_RUN_NO_ENV = ("thick_dreamer_jax.py",)
RESERVE_S = 10  # kept back for the report and for stopping a part that overran


def dumps(obj) -> str:
    return json.dumps(obj, default=str)


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # ru_maxrss is in KiB on Linux


def median(xs):
    return float(statistics.median(xs)) if xs else None


# ======================================================================================================================
# info: devices and versions
# ======================================================================================================================


def version(name: str):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def info() -> dict:
    import platform

    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "packages": {p: version(p) for p in PACKAGES}}
    try:
        import jax

        devices = jax.devices()
        out["jax"] = {
            "version": jax.__version__,
            "backend": jax.default_backend(),
            "count": len(devices),
            "device_kind": devices[0].device_kind,
            "platform": devices[0].platform,
            "gpus": len([d for d in devices if d.platform == "gpu"]),
        }
    except Exception as e:  # noqa: BLE001 (reported, not fatal: the torch parts may still run)
        out["jax"] = {"error": f"{type(e).__name__}: {e}"}
    try:
        import torch
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        out["torch"] = {
            "version": torch.__version__,
            "cuda": cuda,
            "cuda_version": torch.version.cuda,
            "count": torch.cuda.device_count() if cuda else 0,
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "distributed": dist.is_available(),
            "nccl": dist.is_available() and dist.is_nccl_available(),
        }
    except Exception as e:  # noqa: BLE001
        out["torch"] = {"error": f"{type(e).__name__}: {e}"}
    smi = shutil.which("nvidia-smi")
    if smi:  # the driver and the memory of each GPU
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        q = subprocess.run(query, capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = q.stdout.strip().splitlines() if q.returncode == 0 else None
    return out


# ======================================================================================================================
# jax-update: dreamerv3_jax.py / thick_dreamer_jax.py (the same Agent API)
# ======================================================================================================================


def jax_update(script, size, batch, length, updates, policy_steps, num_devices=1) -> dict:
    """--num-devices N > 1 is tried only when the script's Args has the field (the script shards the batch itself); if
    that fails, one device is timed and the error is reported."""
    sys.path.insert(0, ROOT)
    mod = importlib.import_module(script.removesuffix(".py"))
    if num_devices > 1 and "num_devices" in {f.name for f in dataclasses.fields(mod.Args)}:
        try:
            return _jax_update(mod, script, size, batch, length, updates, policy_steps, num_devices)
        except Exception as e:  # noqa: BLE001
            error = f"--num-devices {num_devices}: {type(e).__name__}: {e}"[:500]
            return {**_jax_update(mod, script, size, batch, length, updates, policy_steps, 1), "num_devices_error": error}
    return _jax_update(mod, script, size, batch, length, updates, policy_steps, 1)


def _jax_update(mod, script, size, batch, length, updates, policy_steps, num_devices) -> dict:
    import gymnasium as gym
    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    from random_batch import crafter_batch  # benchmark/speed/random_batch.py

    kw = dict(env_id="crafter", model_size=size, batch_size=batch, batch_length=length, total_timesteps=10**6)
    if num_devices > 1:
        kw["num_devices"] = num_devices
    args = mod.check_args(mod.Args(**kw))
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17)
    agent = mod.Agent(args, obs_space, act_space)
    t = time.perf_counter()
    state = agent.init(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    data = crafter_batch(agent, batch, length)
    # the script's own train step: Agent._train_step jitted by DataParallel for a 1-D mesh of num_devices (the batch split,
    # the state replicated), called as the script's main() calls it; then the same compiled program (same shardings) is in
    # the persistent compilation cache that the env run of the same shapes reads. (A script without DataParallel: the
    # agent's own jitted train step on one device.)
    dp = mod.DataParallel(agent, num_devices) if hasattr(mod, "DataParallel") else None
    if dp is not None:
        state, data, key = dp.replicate(state), dp.split_batch(data), dp.replicate  # key(k): a replicated PRNG key
        train_step, params = dp.train_step, lambda state: dp.first(state.params)  # acting on the first device's copy
    else:
        train_step, params, key = agent.train_step, lambda state: state.params, lambda k: k
    t = time.perf_counter()
    compiled = train_step.lower(state, data, key(jax.random.PRNGKey(0))).compile()
    compile_s = time.perf_counter() - t
    try:  # XLA's FLOP count of one update (a list of one dict in older JAX versions)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
    except Exception:  # noqa: BLE001 (a backend without a cost model: no FLOP rate, the timing stands)
        flops = 0.0
    times = []
    for i in range(updates + 1):  # the first call is a warm-up (allocations, autotuned kernels)
        t = time.perf_counter()
        state, metrics, _ = compiled(state, data, key(jax.random.PRNGKey(i)))
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    update_s = median(times[1:])
    carry, obs, first = agent.initial_carry(1), np.asarray(data["obs"][:1, 0]), np.zeros(1, bool)
    ptimes, acting = [], params(state)
    for i in range(policy_steps + 1):  # the first call compiles the policy step
        t = time.perf_counter()
        action, carry = agent.policy_step(acting, carry, obs, first, jax.random.PRNGKey(i))[:2]  # THICK returns more
        np.asarray(action)  # on the host, as the env needs it
        ptimes.append(time.perf_counter() - t)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}  # None on a CPU
    peak = stats.get("peak_bytes_in_use")
    return {
        "script": script,
        "size": size,
        "batch": f"{batch}x{length}",
        "num_devices": num_devices,
        "device": device.device_kind,
        "platform": device.platform,
        "params": mod.count_params(state.params),
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "update_s": round(update_s, 4),
        "update_s_all": [round(x, 4) for x in times[1:]],
        "updates_timed": updates,
        "policy_step_ms": round(1e3 * median(ptimes[1:]), 3),
        "policy_steps_timed": policy_steps,
        "flop_per_update": flops,
        "tflops_achieved": round(flops / update_s / 1e12, 2) if flops else None,
        "peak_mem_gib": round(peak / GIB, 3) if peak is not None else None,
        "mem_limit_gib": round(stats["bytes_limit"] / GIB, 1) if "bytes_limit" in stats else None,
        "peak_rss_gib": peak_rss_gib(),
    }


# ======================================================================================================================
# torch-update: hieros_s5_torch.py
# ======================================================================================================================


def torch_update(size, levels, batch, length, updates, policy_steps) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    from hieros_throughput import random_batch  # benchmark/speed/hieros_throughput.py

    import hieros_s5_torch as h

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    args = h.Args(env_id="crafter", model_size=size, max_hierarchy=levels, batch_size=batch, batch_length=length)
    args = (getattr(h, "check_args", None) or h.validate)(args) or args  # the script's own flag checks and defaults
    torch.manual_seed(0)
    torch.backends.cudnn.deterministic = args.torch_deterministic  # as the script's main()
    if size == "debug":
        torch.set_num_threads(1)  # as the script's main(): tiny ops lose to thread overhead
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17)
    agent = h.Agent(obs_space, act_space, args).to(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16_autocast)
    per_level, all_times = [], []
    for lv in agent.levels:
        opts, sched = h.make_optimizers(lv, args)
        data = {k: v.to(device) for k, v in random_batch(lv, batch, length, obs_space).items()}
        times = []
        for _ in range(updates + 1):  # the first update is a warm-up (cuDNN/cuBLAS plans, the caching allocator)
            sync()
            t = time.perf_counter()
            h.train_level(lv, opts, sched, data, args, h.wm_loss, autocast)
            sync()
            times.append(time.perf_counter() - t)
        per_level.append(median(times[1:]))
        all_times.append([round(x, 4) for x in times[1:]])
    train_call_s = sum(t / args.subactor_train_every**i for i, t in enumerate(per_level))
    agent.eval()
    runner = h.HierarchyRunner(agent, 1, args, device)
    obs = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, device=device)
    zero, no = torch.zeros(1, device=device), torch.zeros(1, dtype=torch.bool, device=device)
    ptimes = []
    with torch.no_grad():
        for _ in range(policy_steps + 16):  # 16 warm-up steps: every level has acted at least once
            t = time.perf_counter()
            action, _ = runner.step(obs, zero, no, no)
            action.cpu()  # on the host, as the env needs it
            ptimes.append(time.perf_counter() - t)
    cuda = device.type == "cuda"
    return {
        "script": TORCH_SCRIPT,
        "size": size,
        "levels": levels,
        "batch": f"{batch}x{length}",
        "num_devices": 1,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "platform": device.type,
        "params": sum(p.numel() for p in agent.parameters()),
        "update_s": round(per_level[0], 4),
        "update_s_per_level": [round(t, 4) for t in per_level],
        "update_s_all": all_times,
        "train_call_s": round(train_call_s, 4),
        "updates_timed": updates,
        "policy_step_ms": round(1e3 * median(ptimes[16:]), 3),
        "policy_steps_timed": policy_steps,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else None,
        "mem_limit_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
        "peak_rss_gib": peak_rss_gib(),
    }


# ======================================================================================================================
# env-run: the script's own command line for a fixed wall time; env steps per second from its progress lines
# ======================================================================================================================

PROGRESS = re.compile(r"^step (\d+)/(\d+) \| SPS ([\d.]+) \| updates (\d+)")


def steady_rates(lines):
    """lines: (seconds since start, text) of a script's stdout. From its progress lines `step N/M | SPS s | updates U`:
    the rate between the first line after the first update (compile and prefill behind it) and the last line:
        steady SPS = (N_last - N_first) / (t_last - t_first), UPS likewise with U.
    Also the script's own SPS of its last line (since its start: prefill and compile included)."""
    prog = [(t, int(m[1]), float(m[3]), int(m[4])) for t, s in lines if (m := PROGRESS.match(s))]
    out = {
        "progress_lines": len(prog),
        "steps": prog[-1][1] if prog else 0,
        "updates": prog[-1][3] if prog else 0,
        "sps_script": prog[-1][2] if prog else None,
        "sps": None,
        "ups": None,
        "window_s": 0.0,
        "window_steps": 0,
    }
    trained = [p for p in prog if p[3] > 0]
    if len(trained) >= 2 and trained[-1][0] > trained[0][0] and trained[-1][1] > trained[0][1]:
        (t0, s0, _, u0), (t1, s1, _, u1) = trained[0], trained[-1]
        out.update(
            sps=round((s1 - s0) / (t1 - t0), 2),
            ups=round((u1 - u0) / (t1 - t0), 3),
            window_s=round(t1 - t0, 1),
            window_steps=s1 - s0,
            window_updates=u1 - u0,
            first_update_line_s=round(t0, 1),
        )
    return out


def env_run(script, seconds, script_args, batch, length, workdir, torchrun_n=0) -> dict:
    """Run the script (under torchrun with torchrun_n > 1 processes) in workdir for at most `seconds`, then stop it (its
    whole process group, SIGKILL: the measurement is in its stdout already, no checkpoint is wanted)."""
    path = os.path.join(ROOT, script)
    if torchrun_n > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_n}", path]
    else:
        cmd = [sys.executable, path]
    cmd += script_args
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    lines, killed = [], False

    def stop(signum, frame):  # the wall time is up (SIGALRM)
        nonlocal killed
        killed = True
        os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.1))
    try:
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            print(line, end="", file=sys.stderr, flush=True)  # the part's log
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wall = time.perf_counter() - t0
    launcher = f"torchrun --standalone --nproc_per_node {torchrun_n}" if torchrun_n > 1 else "python"
    res = {
        "script": script,
        "command": " ".join([launcher, script, *script_args]),
        "wall_s": round(wall, 1),
        "limit_s": round(seconds, 1),
        "stopped_at_limit": killed,
        "returncode": None if killed else proc.returncode,
    }
    res.update(steady_rates(lines))
    if res["sps"] and res["ups"] is not None:
        res["train_ratio"] = round(res["ups"] * batch * length / res["sps"], 1)  # replayed steps per env step, achieved
    first = next((t for t, s in lines if s.startswith("train step compiled")), None)  # JAX scripts
    res["first_update_done_s"] = round(first, 1) if first is not None else res.get("first_update_line_s")
    if not killed and proc.returncode != 0:
        res["error"] = "\n".join(s for _, s in lines[-15:])
    return res


# ======================================================================================================================
# check: all parts in order, within a time budget; one JSON and a markdown table
# ======================================================================================================================


def multi_device_plan(n_jax_gpus: int, jax_help: dict, n_torch_gpus: int, torch_distributed: bool, hieros_src: str):
    """Detect, never assume: --num-devices N for a JAX script only if N > 1 GPUs are visible and its --help lists the
    flag; torchrun for HIEROS only if N > 1 GPUs are visible, torch.distributed is there and the script uses it."""
    plan = {s: (n_jax_gpus if n_jax_gpus > 1 and "--num-devices" in jax_help.get(s, "") else 1) for s in JAX_SCRIPTS}
    uses_dist = "init_process_group" in hieros_src
    plan[TORCH_SCRIPT] = n_torch_gpus if n_torch_gpus > 1 and torch_distributed and uses_dist else 1
    return plan


def run_part(name, argv, limit, env):
    """One part in its own process under a time limit. Returns (its JSON: the last line of its stdout, or None; its
    status row; its stderr, which is the part's log)."""
    t = time.perf_counter()
    head = f"===== {name} (limit {limit:.0f} s): {' '.join(argv)}\n"
    try:
        p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=limit, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = {"part": name, "seconds": round(time.perf_counter() - t, 1), "limit_s": round(limit), "status": "timeout"}
        return None, status, head + err
    row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else None
    last = (p.stderr.strip().splitlines() or [""])[-1]
    status = {"part": name, "seconds": round(time.perf_counter() - t, 1), "limit_s": round(limit)}
    status["status"] = "ok" if row is not None else f"exit {p.returncode}: {last}"
    if row is not None and row.get("error"):  # an env run whose script failed
        status["status"] = "script failed: " + row["error"].strip().splitlines()[-1]
    elif row is not None and "sps" in row and row["sps"] is None:  # an env run stopped before two lines after training
        status["status"] = "no SPS window: stopped before two progress lines after the first update"
    if row is not None:
        status["cpu_s"] = row.get("part_cpu_s")
    return row, status, head + p.stderr


def run_parts(specs, env, log, jobs=1):
    """specs: (name, argv, limit) of parts, run `jobs` at a time (the real check: 1, one measurement at a time; --dry-run
    runs its update parts and env runs with run_chains). Returns [(row, status)] in the order of specs; the parts' logs go
    to `log` in that order."""
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda spec: run_part(*spec, env), specs))
    for _, _, text in results:
        log.write(text + "\n")
    log.flush()
    return [(row, status) for row, status, _ in results]


def run_chains(chains, env, log, jobs):
    """--dry-run: chains of parts [(update spec, env spec or None)], `jobs` chains at a time, each chain's parts in order.
    Returns [((row, status), (row, status) or None)] in the order of chains; the log holds every update part's output,
    then every env run's, in that order (as run_parts writes them)."""

    def chain(specs):
        return [run_part(*spec, env) if spec else None for spec in specs]

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(chain, chains))
    for i in range(2):
        log.writelines(r[i][2] + "\n" for r in results if r[i] is not None)
    log.flush()
    return [tuple(None if x is None else x[:2] for x in r) for r in results]


def fmt(x, digits=3):
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def table(report: dict) -> str:
    """The markdown summary: the device named, versions, one row per script."""
    inf = report["info"]
    j, t, pk = inf.get("jax", {}), inf.get("torch", {}), inf.get("packages", {})
    mode = " (--dry-run: tiny sizes on the CPU, not a measurement)" if report["dry_run"] else ""
    lines = [
        f"GPU check{mode}, {report['time']}, budget {report['budget_s']} s, wall {report['wall_s']} s",
        "",
        f"- JAX {j.get('version', '-')} on {j.get('count', '-')} x {j.get('device_kind', j.get('error', '-'))} "
        f"({j.get('backend', '-')})",
        f"- torch {t.get('version', '-')} on {t.get('device_name', t.get('error', '-'))} (CUDA {t.get('cuda_version')}, "
        f"{t.get('count', 0)} GPU(s))",
        f"- Python {inf.get('python')}, "
        + ", ".join(f"{k} {pk.get(k)}" for k in ("numpy", "flax", "optax", "gymnasium", "crafter", "tyro")),
        "",
        "| script | size | batch | devices | s / update | policy step ms | env SPS | train ratio | peak GPU GiB | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['script']} | {r['size']} | {r['batch']} | {r['num_devices']} | {fmt(r['update_s'])} | "
            f"{fmt(r['policy_step_ms'])} | {fmt(r['env_sps'])} | {fmt(r['train_ratio'])} | "
            f"{fmt(r['peak_mem_gib'])} | {fmt(r['compile_s'])} |"
        )
    lines += [
        "",
        "s / update: median over the timed updates (HIEROS: level 0; per level and per train call in the JSON); "
        "env SPS: env steps per second of the script's own run on Crafter at its default train ratio, between "
        "the first progress line after the first update and the last (see env_window_s in the JSON).",
    ]
    for p in report["parts"]:
        if p["status"] != "ok":
            lines.append(f"- part {p['part']}: {p['status']}")
    for name in report.get("skipped", []):
        lines.append(f"- part {name}: left out by --dry-run (the code path and flags of another script's env run)")
    return "\n".join(lines)


def update_argv(script, plan, sizes):
    """The update part of one script: jax-update / torch-update with the sizes of SIZES."""
    if script == TORCH_SCRIPT:
        return ["torch-update", *(f"--{k.replace('_', '-')}={v}" for k, v in sizes["torch"].items())]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes["jax"].items()]
    return ["jax-update", "--script", script, "--num-devices", str(plan[script]), *flags]


def env_cli(script, plan, sizes, dry, hieros_src=""):
    """The script's own command line: Crafter at the script's default train ratio, the sizes of the update part (so that
    the JAX train step is read from the compilation cache), and progress lines often enough to time a short window
    (HIEROS: --progress-every N policy steps where the script has that flag, else --log-every N as the JAX scripts)."""
    if script == TORCH_SCRIPT:
        sz = sizes["torch"]
        every = "--progress-every" if "progress_every:" in hieros_src else "--log-every"
        cli = f"--max-hierarchy {sz['levels']} {every} {4 if dry else 20}".split()
    else:
        sz = sizes["jax"]
        cli = f"--log-every {4 if dry else 100}".split() + (["--num-devices", str(plan[script])] if plan[script] > 1 else [])
    cli = f"--env-id crafter --model-size {sz['size']} --batch-size {sz['batch']} --batch-length {sz['length']}".split() + cli
    # the real check: the default train ratio and a step budget that no run reaches in its wall time (it is stopped);
    # --dry-run: 1 update per 2 env steps (the default ratio would be 32 updates per step at 2 x 8) and 32 steps in all
    return cli + ("--total-timesteps 32 --train-ratio 8" if dry else "--total-timesteps 100000").split()


def check(a) -> int:
    t_start = time.perf_counter()
    dry = a.dry_run
    jobs = (a.jobs or os.cpu_count() or 1) if dry else 1
    budget = a.budget if a.budget else BUDGET_S[dry]
    deadline = t_start + budget - a.setup_seconds
    out_dir = os.path.abspath(a.out)
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu_check_")  # the env runs' runs/ folders and the JAX compilation cache
    # --dry-run: the caller's persistent compilation cache if it has one (the test suite's: a rerun reads what the last one
    # compiled), every compile cached; the real check: a fresh cache, filled by the update parts for the env runs
    cache = (dry and os.environ.get("JAX_COMPILATION_CACHE_DIR")) or os.path.join(work, "jax_cache")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    if dry:
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    log = open(os.path.join(out_dir, "gpu_check.log"), "w")
    parts, details = [], {}

    def left():
        return deadline - time.perf_counter() - RESERVE_S

    [(inf, st)] = run_parts([("info", ["info"], min(LIMITS["info"][dry], left()))], env, log)
    parts.append(st)
    inf = inf or {"packages": {}, "error": st["status"]}
    jx, tc = inf.get("jax", {}), inf.get("torch", {})
    # --num-devices / torchrun only where more than one GPU is visible and the script supports it (detected)
    jax_help = {}
    if jx.get("gpus", 0) > 1:
        for s in JAX_SCRIPTS:
            h = subprocess.run([sys.executable, os.path.join(ROOT, s), "--help"], capture_output=True, text=True, timeout=120)
            jax_help[s] = h.stdout
    with open(os.path.join(ROOT, TORCH_SCRIPT)) as f:
        hieros_src = f.read()
    plan = multi_device_plan(jx.get("gpus", 0), jax_help, tc.get("count", 0), bool(tc.get("distributed")), hieros_src)
    sizes = SIZES[dry]
    scripts = [s for s in (*JAX_SCRIPTS, TORCH_SCRIPT) if s in a.scripts]

    # 1) the update parts (the JAX ones also fill the compilation cache that the env runs read)
    specs = []
    for s in scripts:
        kind = "torch-update" if s == TORCH_SCRIPT else "jax-update"
        limit = LIMITS[kind][dry] if dry else min(LIMITS[kind][dry], left())
        specs.append((f"{kind} {s}", update_argv(s, plan, sizes), max(1.0, limit)))

    def env_spec(s, seconds):  # the env run of script s: its own CLI on Crafter, stopped after `seconds`
        sz = sizes["torch" if s == TORCH_SCRIPT else "jax"]
        n_proc = plan[s] if s == TORCH_SCRIPT else 0  # torchrun's --nproc_per_node (0, 1: plain python)
        argv = f"env-run --script {s} --seconds {seconds:.1f} --batch {sz['batch']} --length {sz['length']}".split()
        argv += ["--torchrun", str(n_proc), "--workdir", os.path.join(work, "runs_" + s.removesuffix(".py"))]
        argv += ["--", *env_cli(s, plan, sizes, dry, hieros_src)]
        return (f"env-run {s}", argv, seconds + 15)  # + 15 s: the part stops its run at `seconds` itself

    if dry:
        # every script's update part, then its env run (which reads the compiled programs from the cache), as one chain;
        # `jobs` chains at a time, so that one script's env run overlaps another's update part. The env runs end by
        # themselves; DRY_RUN_NO_ENV's are left out (the same env-run code path and flags as another script's).
        skipped = [s for s in scripts if s in DRY_RUN_NO_ENV]
        env_specs = [None if s in skipped else env_spec(s, ENV_DRY_S) for s in scripts]
        chains = run_chains(list(zip(specs, env_specs, strict=True)), env, log, jobs)
        for s, ((row, st), _) in zip(scripts, chains, strict=True):
            parts.append(st)
            details[s] = {"update": row, "env": None}
        for s, (_, env_part) in zip(scripts, chains, strict=True):
            if env_part is not None:
                details[s]["env"], st = env_part
                parts.append(st)
    else:
        skipped = []
        for s, (row, st) in zip(scripts, run_parts(specs, env, log, jobs), strict=True):
            parts.append(st)
            details[s] = {"update": row, "env": None}

        # 2) the env runs: the script's own CLI on Crafter; they share the time that is left
        for i, s in enumerate(scripts):
            share = a.env_seconds or max(left() / (len(scripts) - i), ENV_MIN_S)  # an equal share, at least ENV_MIN_S
            seconds = min(share, left())
            spec = env_spec(s, seconds)
            if seconds < ENV_MIN_S:
                parts.append({"part": spec[0], "seconds": 0.0, "limit_s": round(seconds), "status": "skipped: no time left"})
            else:
                [(details[s]["env"], st)] = run_parts([spec], env, log)
                parts.append(st)
    shutil.rmtree(work, ignore_errors=True)

    rows = []
    for s in scripts:
        u, e = details[s]["update"] or {}, details[s]["env"] or {}
        sz = sizes["torch" if s == TORCH_SCRIPT else "jax"]
        rows.append(
            {
                "script": s,
                "size": sz["size"] + (f" ({sz['levels']} levels)" if s == TORCH_SCRIPT else ""),
                "batch": f"{sz['batch']}x{sz['length']}",
                "num_devices": plan[s],
                "update_s": u.get("update_s"),
                "train_call_s": u.get("train_call_s"),
                "policy_step_ms": u.get("policy_step_ms"),
                "env_sps": e.get("sps"),
                "env_sps_script": e.get("sps_script"),
                "env_window_s": e.get("window_s"),
                "train_ratio": e.get("train_ratio"),
                "peak_mem_gib": u.get("peak_mem_gib"),
                "compile_s": u.get("compile_s"),
                "params": u.get("params"),
            }
        )
    report = {
        "check": "benchmark/gpu_check.sh",
        "dry_run": dry,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "budget_s": budget,
        "wall_s": None,
        "device": tc.get("device_name"),
        "device_kind": jx.get("device_kind"),
        "info": inf,
        "plan": plan,
        "rows": rows,
        "details": details,
        "parts": parts,
        "skipped": [f"env-run {s}" for s in skipped],  # --dry-run: DRY_RUN_NO_ENV
        "wheels_installed": os.environ.get("GPU_CHECK_WHEELS", "").split() or None,
    }
    report["wall_s"] = round(time.perf_counter() - t_start + a.setup_seconds, 1)
    md = table(report)
    report["table"] = md
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(md + "\n")
    log.close()
    print(md)
    print(f"\nwritten: {os.path.join(out_dir, 'gpu_check.json')}, gpu_check.md, gpu_check.log")
    return 0 if all(p["status"] == "ok" for p in parts) else 1


def git_commit():
    try:
        p = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="all parts, one JSON and a markdown table (what gpu_check.sh runs)")
    c.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: exercises every part (CI)")
    c.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results"), help="folder of gpu_check.{json,md,log}")
    c.add_argument("--budget", type=float, default=0, help=f"total seconds (default {BUDGET_S[0]}; dry run {BUDGET_S[1]})")
    env_help = "wall seconds of each env run (default: an equal share of the budget that the other parts leave)"
    c.add_argument("--env-seconds", type=float, default=0, help=env_help)
    c.add_argument("--scripts", nargs="+", default=[*JAX_SCRIPTS, TORCH_SCRIPT], choices=[*JAX_SCRIPTS, TORCH_SCRIPT])
    c.add_argument("--jobs", type=int, default=0, help="--dry-run: scripts at a time (default: one per core)")
    c.add_argument("--setup-seconds", type=float, default=0, help=argparse.SUPPRESS)  # spent by gpu_check.sh before
    sub.add_parser("info", help="devices and versions")
    j = sub.add_parser("jax-update", help="one JAX script: s/update, policy step, peak device memory")
    j.add_argument("--script", choices=JAX_SCRIPTS, default=JAX_SCRIPTS[0])
    j.add_argument("--num-devices", type=int, default=1)
    t = sub.add_parser("torch-update", help="hieros_s5_torch.py: s/update per level, policy step, peak device memory")
    t.add_argument("--levels", type=int, default=3)
    for q, kind in ((j, "jax"), (t, "torch")):
        for k, v in SIZES[False][kind].items():
            if k != "levels":
                q.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    e = sub.add_parser("env-run", help="a script's own CLI for --seconds; env steps per second from its progress lines")
    e.add_argument("--script", required=True)
    e.add_argument("--seconds", type=float, required=True)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--length", type=int, default=64)
    e.add_argument("--workdir", default=None)
    e.add_argument("--torchrun", type=int, default=0, help="N > 1: torchrun --nproc_per_node N")
    e.add_argument("script_args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    if a.cmd == "check":
        sys.exit(check(a))
    if a.cmd == "info":
        res = info()
    elif a.cmd == "jax-update":
        res = jax_update(a.script, a.size, a.batch, a.length, a.updates, a.policy_steps, a.num_devices)
    elif a.cmd == "torch-update":
        res = torch_update(a.size, a.levels, a.batch, a.length, a.updates, a.policy_steps)
    else:
        args = a.script_args[1:] if a.script_args[:1] == ["--"] else a.script_args
        res = env_run(a.script, a.seconds, args, a.batch, a.length, a.workdir or tempfile.mkdtemp(), a.torchrun)
    rs, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res["part_cpu_s"] = round(rs.ru_utime + rs.ru_stime + rc.ru_utime + rc.ru_stime, 1)  # this part's processes, CPU seconds
    print(dumps(res), flush=True)


if __name__ == "__main__":
    main()
