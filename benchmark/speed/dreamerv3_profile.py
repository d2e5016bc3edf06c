"""Where does the time of one dreamerv3_jax.py update go? Times the parts of the loss separately (each jitted on its
own, forward + backward where the full update differentiates it) next to the full train step.

    python benchmark/speed/dreamerv3_profile.py --size 12m                             # Crafter shapes, batch 16 x 64
    XLA_FLAGS=... python benchmark/speed/dreamerv3_profile.py --size 12m --parts full  # compare XLA CPU flags
    python benchmark/speed/dreamerv3_profile.py --size 12m --parts full --trace 30     # + the 30 slowest XLA ops

The parts overlap a little with the full step (XLA fuses across them there), so they need not sum to it exactly.
"""

import argparse
import collections
import glob
import json
import os
import re
import resource
import sys
import tempfile
import time

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from random_batch import crafter_batch  # noqa: E402  (benchmark/speed/random_batch.py)

import dreamerv3_jax as d  # noqa: E402


def timeit(f, *xs, reps=3):
    jax.block_until_ready(f(*xs))  # compile + warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*xs))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def print_slowest_ops(agent, state, batch, key, n):
    """Trace one update with jax.profiler and print its n slowest XLA ops with their shape and JAX source op."""
    from jax.profiler import ProfileData

    meta = {}  # HLO instruction name -> (result shape, op_name metadata)
    for line in agent.train_step.lower(state, batch, key).compile().as_text().splitlines():
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"', line)
        if m:
            meta[m.group(1)] = (m.group(2), m.group(3))
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        jax.block_until_ready(agent.train_step(state, batch, key))
        jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0])
    seconds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in meta:
                    seconds[ev.name] += ev.duration_ns / 1e9
    for name, sec in seconds.most_common(n):
        shape, op = meta[name]
        print(f"{sec:7.3f} s  {name:28s} {shape[:40]:40s} {op[-90:]}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="12m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--parts", nargs="+", default=["enc", "dec", "observe", "imagine", "heads", "full"])
    p.add_argument("--trace", type=int, default=0, help="with 'full': print the N slowest XLA ops of one traced update")
    a = p.parse_args()
    args = d.check_args(d.Args(env_id="crafter", model_size=a.size, compute_dtype=a.dtype, batch_size=a.batch,
                               batch_length=a.length, total_timesteps=10**6))  # fmt: skip
    agent = d.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    state = agent.init(jax.random.PRNGKey(0))
    params, key = state.params, jax.random.PRNGKey(1)
    rng = np.random.default_rng(0)
    b, t = a.batch, a.length
    obs = jnp.asarray(rng.integers(0, 255, (b, t, 64, 64, 3), dtype=np.uint8))
    act = jnp.asarray(np.eye(17, dtype=np.float32)[rng.integers(0, 17, (b, t))])
    first = jnp.zeros((b, t), bool)
    h0, z0 = jnp.zeros((b, agent.deter)), jnp.zeros((b, agent.stoch, agent.classes))
    embed = agent.enc.apply({"params": params["enc"]}, obs)
    hs, zs, _ = jax.jit(agent.observe)(params, h0, z0, embed, act, first, key)
    out = {}

    if "enc" in a.parts:  # encoder forward + backward (weights)
        f = jax.jit(jax.grad(lambda pe: jnp.sum(agent.enc.apply({"params": pe}, obs) ** 2)))
        out["enc_fwd_bwd_s"] = timeit(f, params["enc"], reps=a.reps)
    if "dec" in a.parts:  # decoder + pixel MSE, forward + backward (weights and inputs)
        def dec_loss(pd, h, z):
            rec = agent.dec.apply({"params": pd}, h, z)
            return jnp.sum((rec - obs.astype(jnp.float32) / 255.0) ** 2)

        f = jax.jit(jax.grad(dec_loss, (0, 1, 2)))
        out["dec_fwd_bwd_s"] = timeit(f, params["dec"], hs, zs, reps=a.reps)
    if "observe" in a.parts:  # RSSM posterior scan over T, forward + backward
        def obs_loss(pr, e):
            h, z, post = agent.observe({**params, "rssm": pr}, h0, z0, e, act, first, key)
            return jnp.sum(h**2) + jnp.sum(post)

        f = jax.jit(jax.grad(obs_loss, (0, 1)))
        out["observe_fwd_bwd_s"] = timeit(f, params["rssm"], embed, reps=a.reps)
    n = b * t
    hn, zn = hs.reshape(n, -1), zs.reshape(n, agent.stoch, agent.classes)
    if "imagine" in a.parts:  # prior + actor rollout, H steps from B*T starts, forward only (no gradient flows in)
        f = jax.jit(agent.imagine)
        out["imagine_fwd_s"] = timeit(f, params, hn, zn, key, reps=a.reps)
    if "heads" in a.parts:  # reward/continue/critic/slow-critic/actor heads on the imagined trajectories + losses
        ih, iz, iact = jax.jit(agent.imagine)(params, hn, zn, key)

        def head_loss(pp):
            ifeat = agent.feat(ih, iz)
            bb = d.bins()
            r = d.twohot_mean(agent.head("rew", pp["rew"], ifeat), bb)
            c = jax.nn.sigmoid(agent.head("con", pp["con"], ifeat)[..., 0])
            vl = agent.head("critic", pp["critic"], ifeat)
            v = d.twohot_mean(vl, bb)
            sv = d.twohot_mean(agent.head("critic", state.slow_critic, ifeat), bb)
            ret = d.lambda_return(r, c, 0.95 * jnp.ones_like(c), jax.lax.stop_gradient(v))
            _, logp, ent = agent.policy(pp, ifeat[:, :-1])
            la = -(logp(iact) * jax.lax.stop_gradient(ret - v[:, :-1]) + 3e-4 * ent).mean()
            lc = (d.twohot_loss(vl[:, :-1], jax.lax.stop_gradient(ret), bb) + d.twohot_loss(vl[:, :-1], sv[:, :-1], bb)).mean()
            return la + lc

        f = jax.jit(jax.grad(head_loss))
        out["heads_fwd_bwd_s"] = timeit(f, params, reps=a.reps)
    if "full" in a.parts:
        batch = crafter_batch(agent, b, t)
        st = agent.init(jax.random.PRNGKey(0))
        st, _, _ = agent.train_step(st, batch, key)
        jax.block_until_ready(st)
        ts = []
        for i in range(a.reps):
            t0 = time.perf_counter()
            st, _, _ = agent.train_step(st, batch, jax.random.PRNGKey(i))
            jax.block_until_ready(st)
            ts.append(time.perf_counter() - t0)
        out["full_update_s"] = float(np.median(ts))
        if a.trace:
            print_slowest_ops(agent, st, batch, key, a.trace)
    out = {k: round(v, 3) for k, v in out.items()}
    out |= {"size": a.size, "dtype": a.dtype, "batch": f"{b}x{t}", "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # fmt: skip
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
