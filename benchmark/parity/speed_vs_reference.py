"""Update time of dreamerv3_jax.py next to danijar/dreamerv3 @ e3f0224, in one process, on the same batch.

    python benchmark/parity/speed_vs_reference.py --ref /tmp/dreamerv3 --deps /tmp/dreamerv3-deps

(set-up of the reference and its dependencies: `python benchmark/parity/dreamerv3_reference.py --help`). Both agents
are built at one model size (default 12m, the reference's size12m preset and our --model-size 12m: the same widths) in
float32 for Crafter-shaped inputs (64x64x3 uint8 images, 17 discrete actions), batch 16 x 64 (+1 replay-context step).
One "update" is what each training loop calls per batch: the reference's Agent.train (loss, gradients, optimizer step
and slow-critic update, jitted through ninjax.pure, the parameters donated as embodied.jax.Agent does) and our
Agent.train_step (the same, jitted with the state donated). After one warm-up call each (compilation), the two are
timed alternately, `--repeats` pairs, so that a change of the machine's load hits both alike. The data are random (the
update cost does not depend on the values); every window starts an episode at step 1. Prints the medians and writes
them, the ratio, the load average before and after, and the CPU count to a JSON file.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, HERE]
from dreamerv3_reference import PINNED, fail, import_reference  # noqa: E402  (benchmark/parity/dreamerv3_reference.py)

SIZES = ("1m", "12m", "25m", "50m", "100m", "200m", "400m")  # presets both sides have under the same name


def parse_args():
    setup = "set-up of --ref and --deps: python benchmark/parity/dreamerv3_reference.py --help"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=setup)
    p.add_argument("--ref", required=True, help=f"path of a danijar/dreamerv3 checkout at {PINNED}")
    p.add_argument("--deps", default=None, help="folder that holds the reference's extra dependencies (pip --target)")
    p.add_argument("--size", default="12m", choices=SIZES, help="model size preset (default 12m)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed pairs after the warm-up (default 3)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results", "speed_vs_reference.json"))
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.ref, "dreamerv3", "agent.py")):
        fail(f"--ref {args.ref}: no dreamerv3/agent.py there (clone danijar/dreamerv3 and check out {PINNED})")
    if args.batch_size < 1 or args.batch_length < 2 or args.repeats < 1:
        fail("--batch-size and --repeats must be >= 1, --batch-length >= 2")
    try:
        args.ref_commit = subprocess.run(["git", "-C", args.ref, "rev-parse", "HEAD"], capture_output=True, text=True,
                                         check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        fail(f"--ref {args.ref}: not a git checkout")
    if not args.ref_commit.startswith(PINNED):
        fail(f"--ref {args.ref} is at {args.ref_commit[:7]}, not {PINNED}")
    return args


def reference_update(args, data_np: dict):
    """The reference agent at --size in float32 and its jitted train function; returns (call, parameter count)."""
    ragent = import_reference(args.ref, args.deps)
    import elements
    import jax
    import ninjax as nj
    import ruamel.yaml as yaml

    with open(os.path.join(args.ref, "dreamerv3", "configs.yaml")) as f:
        configs = yaml.YAML(typ="safe").load(f.read())
    config = elements.Config(configs["defaults"]).update(configs[f"size{args.size}"])
    config = config.update(batch_size=args.batch_size, batch_length=args.batch_length)
    config = config.update({"jax.compute_dtype": "float32"})
    acfg = elements.Config(**config.agent, logdir="/tmp/unused", seed=0, jax=config.jax, batch_size=args.batch_size,
                           batch_length=args.batch_length, replay_context=config.replay_context,
                           report_length=config.report_length, replica=0, replicas=1)  # fmt: skip
    obs_space = {"image": elements.Space(np.uint8, (64, 64, 3)), "reward": elements.Space(np.float32)}
    obs_space |= {k: elements.Space(bool) for k in ("is_first", "is_last", "is_terminal")}
    act_space = {"action": elements.Space(np.int32, (), 0, 17)}
    agent = object.__new__(ragent.Agent)  # without embodied.jax.Agent.__new__'s sharding / compile wrapper
    agent.__init__(obs_space, act_space, acfg)
    B, T1 = data_np["reward"].shape
    data = {k: data_np[k] for k in ("image", "reward", "is_first", "is_last", "is_terminal")}
    data["action"] = data_np["action_index"].astype(np.int32)
    data["consec"] = np.zeros((B, T1), np.int32)
    data["stepid"] = np.zeros((B, T1, 20), np.uint8)
    data["dyn/deter"] = np.zeros((B, T1, agent.dyn.deter), np.float32)
    data["dyn/stoch"] = np.zeros((B, T1, agent.dyn.stoch, agent.dyn.classes), np.float32)
    seed = np.array([0, 0], np.uint32)
    carry = nj.pure(agent.init_train)({}, B)[1]
    state = nj.init(agent.train)({}, carry, data, seed=seed)  # parameters and optimizer state (the loss is dead code)
    train = jax.jit(nj.pure(agent.train), donate_argnums=0)
    trained = ("dyn", "enc", "dec", "rew", "con", "pol", "val")  # the optimizer's modules
    count = sum(int(np.prod(v.shape)) for k, v in state.items() if k.split("/")[0] in trained)
    box = {"state": state, "i": 0}

    def call():
        box["i"] += 1
        box["state"], (_, _, metrics) = train(box["state"], carry, data, seed=np.array([0, box["i"]], np.uint32))
        jax.block_until_ready(box["state"])

    return call, count


def our_update(args, data_np: dict):
    """dreamerv3_jax.Agent at --size in float32 and its jitted train step; returns (call, parameter count)."""
    import gymnasium as gym
    import jax

    import dreamerv3_jax

    a = dreamerv3_jax.Args(env_id="crafter", model_size=args.size, batch_size=args.batch_size,
                           batch_length=args.batch_length, compute_dtype="float32")  # fmt: skip
    agent = dreamerv3_jax.Agent(a, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    B, T1 = data_np["reward"].shape
    batch = {"obs": data_np["image"], "action": np.eye(17, dtype=np.float32)[data_np["action_index"]],
             **{k: data_np[k] for k in ("reward", "is_first", "is_last", "is_terminal")},
             "deter": np.zeros((B, T1, agent.deter), np.float16),
             "stoch": np.zeros((B, T1, agent.stoch), np.uint8)}  # fmt: skip
    box = {"state": agent.init(jax.random.PRNGKey(0)), "i": 0}
    count = dreamerv3_jax.count_params(box["state"].params)

    def call():
        box["i"] += 1
        box["state"], metrics, _ = agent.train_step(box["state"], batch, jax.random.PRNGKey(box["i"]))
        jax.block_until_ready(box["state"])

    return call, count


def main():
    args = parse_args()
    import jax

    jax.config.update("jax_platforms", "cpu")
    B, T1 = args.batch_size, args.batch_length + 1
    rng = np.random.default_rng(0)
    first = np.zeros((B, T1), bool)
    first[:, 1] = True  # every window starts an episode at its first trained step (step 0 is replay context)
    data = {"image": rng.integers(0, 256, (B, T1, 64, 64, 3), dtype=np.uint8),
            "action_index": rng.integers(0, 17, (B, T1)), "reward": rng.normal(size=(B, T1)).astype(np.float32),
            "is_first": first,
            "is_last": np.zeros((B, T1), bool), "is_terminal": np.zeros((B, T1), bool)}  # fmt: skip
    load_before = os.getloadavg()
    updates, counts, compile_s = {}, {}, {}
    for name, build in (("reference", reference_update), ("ours", our_update)):
        updates[name], counts[name] = build(args, data)
        t0 = time.perf_counter()
        updates[name]()  # warm-up: compilation and the first run
        compile_s[name] = time.perf_counter() - t0
        print(f"{name}: {counts[name]:,} parameters, warm-up call {compile_s[name]:.1f} s", flush=True)
    times = {"reference": [], "ours": []}
    for i in range(args.repeats):  # alternating pairs
        for name in ("reference", "ours"):
            t0 = time.perf_counter()
            updates[name]()
            times[name].append(time.perf_counter() - t0)
        print(f"pair {i + 1}: reference {times['reference'][-1]:.2f} s, ours {times['ours'][-1]:.2f} s", flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    try:
        ours_commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        ours_commit = "unknown"
    rec = {
        "what": "one float32 update (loss, gradients, optimizer step, slow critic), same batch, same process, alternating",
        "size": args.size, "batch": [args.batch_size, args.batch_length], "image": [64, 64, 3], "actions": 17,
        "reference": f"danijar/dreamerv3@{args.ref_commit[:7]}", "ours": f"dreamerv3_jax.py@{ours_commit}",
        "params": counts, "warmup_call_s": {k: round(v, 1) for k, v in compile_s.items()},
        "update_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "update_s_median": {k: round(v, 2) for k, v in med.items()},
        "ratio_reference_over_ours": round(med["reference"] / med["ours"], 3),
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "jax": jax.__version__, "device": str(jax.devices()[0]), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    print(f"median update: reference {med['reference']:.2f} s, ours {med['ours']:.2f} s, "
          f"ratio {rec['ratio_reference_over_ours']:.2f} (load {rec['load_avg_before']} -> {rec['load_avg_after']}, "
          f"{rec['cpu_count']} CPUs); wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
