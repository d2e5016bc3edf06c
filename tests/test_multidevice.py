"""--num-devices N of dreamerv3_jax.py and thick_dreamer_jax.py (data parallel on jax.sharding), on the CPU.

XLA_FLAGS=--xla_force_host_platform_device_count=2 splits the CPU into two JAX devices; the flag must be set before JAX
starts, so each test runs a fresh process (forked by conftest.py's fork server, which has not started JAX): this
file's __main__ block for the comparison of one update, the script itself for the tiny run. (a) Updates on 2 devices
(the batch split along its batch axis, the training state replicated) equal the same updates on 1 device for the same
global batch, up to float32 summation order. (b) A tiny
run with --num-devices 2 trains, writes a checkpoint and resumes from it."""

import importlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conftest.py's XLA flags (fast compilation) plus the two CPU devices; JAX reads XLA_FLAGS when it starts its backend,
# which a forked run (conftest.py: script_run) starts after it has set this environment
TWO_DEVICES = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"}
TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "16", "--imag-horizon", "3"]
RTOL = 1e-5  # max |two - one| <= RTOL * max |one| (parameters: over all of them, the rest per tensor)


def compare_updates(script: str, updates: int = 2) -> dict:
    """Two updates of `script`'s Agent on 1 device and on 2 devices from the same state, batches and keys (vector
    observations, continuous actions, debug size; no warm-up and a large learning rate, so that the parameters move).
    Returns the largest relative difference per part: max |two - one| / max |one| per tensor, for the parameters over
    all of them (a bias starts at zero, and LaProp moves every element by about the learning rate whatever the size of
    its gradient, so an element whose gradient is float32 noise moves differently: the parameters agree to RTOL of
    their scale, not element by element). The 2-device gradient adds the halves' partial sums: the squared gradients
    in LaProp's state (nu) agree to about 5e-5 (float32 summation order, amplified where a gradient is small against
    its tensor's largest element)."""
    import gymnasium as gym
    import jax
    import jax.numpy as jnp
    import numpy as np

    mod = importlib.import_module(script)
    assert jax.device_count() == 2, jax.devices()
    args = mod.check_args(mod.Args(env_id="CartPole-v1", model_size="debug", batch_size=4, batch_length=8, imag_horizon=3,
                                   learning_rate=1e-3, warmup=0, total_timesteps=10_000))  # fmt: skip
    obs_space, act_space = gym.spaces.Box(-1, 1, (5,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)
    agent = mod.Agent(args, obs_space, act_space)
    # random batches in the replay's format (B, T + 1, ...): every key and dtype of Replay.data
    replay = mod.Replay(16, 1, args.batch_length + 1, obs_space, agent.act_dim, agent.deter, agent.stoch, 0)
    rng, shape = np.random.default_rng(0), (args.batch_size, args.batch_length + 1)
    normal, flags = lambda s: rng.normal(size=s), lambda p: lambda s: rng.random(s) < p
    fill = {"obs": normal, "action": lambda s: rng.uniform(-1, 1, s), "reward": normal, "is_first": flags(0.1),
            "is_last": flags(0.1), "is_terminal": flags(0.05), "deter": normal,
            "stoch": lambda s: rng.integers(0, agent.classes, s), "context": normal}  # fmt: skip
    batches = [{k: fill[k](shape + v.shape[2:]).astype(v.dtype) for k, v in replay.data.items()} for _ in range(updates)]
    keys = list(jax.random.split(jax.random.PRNGKey(1), updates))
    state = agent.init(jax.random.PRNGKey(0))

    one = jax.tree.map(jnp.copy, state)  # agent.train_step donates its state
    for batch, key in zip(batches, keys, strict=True):
        one, m1, lat1 = agent.train_step(one, batch, key)

    dp = mod.DataParallel(agent, 2)
    two = dp.replicate(state)
    for batch, key in zip(batches, keys, strict=True):
        split = dp.split_batch(batch)
        assert [s.data.shape[0] for s in split["obs"].addressable_shards] == [args.batch_size // 2] * 2  # B/2 per device
        two, m2, lat2 = dp.train_step(two, split, dp.replicate(key))
    assert all(len(x.sharding.device_set) == 2 and x.sharding.is_fully_replicated for x in jax.tree.leaves(two))

    def rel(a, b, scale=None):  # max |b - a| / max |a|
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(a).max() if scale is None else scale, 1e-30))

    pairs = lambda name: list(zip(jax.tree.leaves(getattr(one, name)), jax.tree.leaves(getattr(two, name)), strict=True))
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(one.params))  # the largest parameter
    out = {"params": max(rel(a, b, scale) for a, b in pairs("params"))}
    out |= {name: max(rel(a, b) for a, b in pairs(name)) for name in ("slow_critic", "retnorm")}
    nu = zip(jax.tree.leaves(one.opt_state.nu), jax.tree.leaves(two.opt_state.nu), strict=True)
    out["grad_squares"] = max(rel(a, b) for a, b in nu)
    out["losses"] = max(rel(m1[k], m2[k]) for k in m1 if k.startswith("losses/") or k == "opt/grad_norm")  # of update 2
    out["deter"] = rel(lat1[0], dp.local_rows(lat2[0]))  # float16: relative rounding 2^-11
    out["stoch_equal"] = float(np.mean(np.asarray(lat1[1]) == dp.local_rows(lat2[1])))
    out["updates"] = [int(one.updates), int(two.updates)]
    moved = [rel(a, b, scale) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(one.params), strict=True)]
    out["param_change"] = max(moved)  # the updates are not zero
    return out


def test_update_on_two_devices_equals_update_on_one(script_run, tmp_path):
    """dreamerv3_jax.py only (each script's compilations take a large part of this file's time budget): THICK shares
    DataParallel line for line (tests/test_thick.py, shared helpers) and its train step's inputs are the same kind."""
    out = script_run("tests/test_multidevice.py", ["dreamerv3_jax"], tmp_path, env=TWO_DEVICES, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["updates"] == [2, 2] and r["param_change"] > 10 * RTOL, r
    assert max(r[k] for k in ("params", "slow_critic", "retnorm", "losses")) <= RTOL, r
    assert r["grad_squares"] <= 20 * RTOL, r  # see the docstring
    assert r["deter"] <= 2e-3 and r["stoch_equal"] >= 0.99, r


def test_tiny_run_on_two_devices_trains_checkpoints_and_resumes(script_run, tmp_path):
    flags = ["--env-id", "CartPole-v1", *TINY, "--num-devices", "2"]

    def run(*flags):
        out = script_run("dreamerv3_jax.py", flags, tmp_path, env=TWO_DEVICES, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    out = run(*flags, "--total-timesteps", "40", "--checkpoint-every", "20")
    assert "data parallel: each update of 2 sequences runs on 2 devices" in out.stdout
    assert "updates 0" not in out.stdout.splitlines()[-2], out.stdout[-2000:]
    ckpt = next(tmp_path.glob("runs/*/checkpoint.ckpt"))
    out = run(*flags, "--total-timesteps", "60", "--resume", str(ckpt))
    assert "resumed from" in out.stdout and "step 60/60" in out.stdout, out.stdout[-2000:]


if __name__ == "__main__":
    print(json.dumps(compare_updates(sys.argv[1])))
