"""THICK sparsity sweep and event alignment on Crafter: a CPU-sized, offline stand-in for short Crafter runs per β.

    python benchmark/probes/thick_sparsity.py --betas 0.1 1 10 100 --updates 400

1. Collects one Crafter dataset with a uniform random policy (train stream + held-out stream, with info["inventory"]
   and info["achievements"] per step).
2. For every beta trains the same freshly initialised debug-size THICK agent (thick_dreamer_jax.Agent, the full jitted
   train step: world model, sparsity loss, high level, actor-critic) on windows sampled from the train stream. beta is
   passed into the jitted step as an argument, so all betas share one compilation.
3. Runs the C-RSSM filter (the computation of the acting step, gate noise on) over the held-out stream and reports the
   acting change rate (fraction of steps with any gate open) and the alignment of context changes with inventory
   changes / achievement unlocks within +-1 step: precision, recall, and the lift of the precision over the base rate
   (the fraction of all steps that have an event within +-1 step).
Writes <out>.json and <out>.png (default benchmark/results/thick_sparsity) and prints the table.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
import common  # noqa: E402
import thick_dreamer_jax as td  # noqa: E402


def collect(steps: int, seed: int, size: int = 64):
    """Uniform random policy in Crafter: obs, one-hot actions a_t (chosen after o_t), rewards r_t (on arriving at o_t),
    is_first, is_terminal, and per step whether the inventory changed or an achievement was unlocked on arriving at o_t."""
    cache = f"/tmp/thick_sparsity_data_{steps}_{seed}_{size}.npz"  # collection is slow on a loaded CPU: reuse it
    if os.path.isfile(cache):
        with np.load(cache) as f:
            return dict(f)
    env = common.make_env("crafter", seed, 0, False, "bench", size=size)()
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    inv, ach = dict(info["inventory"]), {}
    data = {k: [] for k in ("obs", "action", "reward", "is_first", "is_terminal", "event")}
    reward, first, term, event, done = 0.0, True, False, False, False
    for _ in range(steps):
        a = int(rng.integers(17))
        for k, v in (("obs", obs), ("action", a), ("reward", reward), ("is_first", first), ("is_terminal", term),
                     ("event", event)):  # fmt: skip
            data[k].append(v)
        if done:  # the final observation was recorded above: reset (is_first on the next record)
            obs, info = env.reset()
            inv, ach, reward, first, term, event = dict(info["inventory"]), {}, 0.0, True, False, False
            done = False
            continue
        obs, reward, terminated, truncated, info = env.step(a)
        new_inv = dict(info["inventory"])
        new_ach = dict(env.unwrapped._env._player.achievements)  # unlock counts so far (the wrapper gives them at the end)
        unlocked = any(v > ach.get(k, 0) for k, v in new_ach.items())
        event = new_inv != inv or unlocked
        inv, ach = new_inv, new_ach
        first, term, done = False, bool(terminated), bool(terminated or truncated)
    out = {k: np.asarray(v) for k, v in data.items()}
    out["action"] = np.eye(17, dtype=np.float32)[out["action"]]
    out["reward"] = out["reward"].astype(np.float32)
    np.savez(cache, **out)
    return out


def alignment(changed, event, first):
    """Precision / recall of context changes vs events within +-1 step; base rate = P(event within +-1) over all steps."""
    valid = ~first
    near = lambda x: np.convolve(x.astype(float), np.ones(3), "same") > 0  # x within +-1 step
    ev_near, ch_near = near(event & valid), near(changed & valid)
    ch, ev = changed & valid, event & valid
    precision = float(ev_near[ch].mean()) if ch.any() else float("nan")
    recall = float(ch_near[ev].mean()) if ev.any() else float("nan")
    base = float(ev_near[valid].mean())
    lift = precision / base if base > 0 else float("nan")
    return {"precision": precision, "recall": recall, "base_rate": base, "lift": lift, "changes": int(ch.sum()),
            "events": int(ev.sum())}  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--betas", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    ap.add_argument("--updates", type=int, default=400)
    ap.add_argument("--train-steps", type=int, default=6000)
    ap.add_argument("--eval-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-length", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--model-size", default="debug")
    ap.add_argument("--image-size", type=int, default=64, help="Crafter render size (32 is 4x cheaper on a CPU)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="benchmark/results/thick_sparsity")
    a = ap.parse_args()
    t_start = time.time()
    train = collect(a.train_steps, a.seed, a.image_size)
    held = collect(a.eval_steps, a.seed + 1000, a.image_size)
    print(f"collected {a.train_steps} + {a.eval_steps} random-policy steps in {time.time() - t_start:.0f} s; "
          f"events per step (held-out) {held['event'][~held['is_first']].mean():.3f}", flush=True)  # fmt: skip
    args = td.Args(env_id="crafter", model_size=a.model_size, batch_size=a.batch_size, batch_length=a.batch_length,
                   learning_rate=a.learning_rate, warmup=a.warmup, replay_context=0, seed=a.seed)  # fmt: skip
    import gymnasium as gym

    obs_space = gym.spaces.Box(0, 255, (a.image_size, a.image_size, 3), np.uint8)
    agent = td.Agent(args, obs_space, gym.spaces.Discrete(17))
    B, L = a.batch_size, a.batch_length + 1

    def step(state, batch, key, beta):  # beta enters the trace as an argument: one compilation for every beta
        agent.args.sparse_scale = beta
        try:
            return agent._train_step(state, batch, key)
        finally:
            agent.args.sparse_scale = 1.0

    jstep = jax.jit(step)

    def filt(params, key):  # the acting computation over the whole held-out stream, gate noise on
        embed = agent.enc.apply({"params": params["enc"]}, jnp.asarray(held["obs"])[None])
        prev_a = jnp.concatenate([jnp.zeros((1, 17)), jnp.asarray(held["action"][:-1])], 0)[None]
        zeros = jnp.zeros((1, agent.deter)), jnp.zeros((1, agent.stoch, agent.classes)), jnp.zeros((1, agent.ctx))
        _, _, _, thick = agent.observe(params, *zeros, embed, prev_a, jnp.asarray(held["is_first"])[None], key)
        return jnp.any(thick["theta"][0] > 0, -1)

    jfilt = jax.jit(filt)
    rng = np.random.default_rng(a.seed)
    n = len(train["reward"])
    results = []
    for beta in a.betas:
        state = agent.init(jax.random.PRNGKey(a.seed))
        key = jax.random.PRNGKey(a.seed + 1)
        rates, t0 = [], time.time()
        for u in range(a.updates):
            starts = rng.integers(0, n - L, B)
            idx = starts[:, None] + np.arange(L)
            batch = {k: train[k][idx] for k in ("obs", "action", "reward", "is_first", "is_terminal")}
            batch["is_last"] = np.zeros((B, L), bool)
            batch["deter"] = np.zeros((B, L, agent.deter), np.float16)
            batch["stoch"] = np.zeros((B, L, agent.stoch), np.uint8)
            batch["context"] = np.zeros((B, L, agent.ctx), np.float32)
            key, k = jax.random.split(key)
            state, metrics, _ = jstep(state, batch, k, jnp.float32(beta))
            rates.append(float(metrics["thick/change_rate"]))
            if u % 100 == 0 or u == a.updates - 1:
                print(f"beta {beta}: update {u} train change rate {rates[-1]:.3f} ({time.time() - t0:.0f} s)", flush=True)
        changed = np.asarray(jfilt(state.params, jax.random.PRNGKey(7)))
        first = held["is_first"].astype(bool)
        rec = {"beta": beta, "acting_change_rate": float(changed[~first].mean()),
               "train_change_rate_last50": float(np.mean(rates[-50:])), "train_change_rate_curve": rates,
               "hl_valid_frac": float(metrics["thick/hl_valid_frac"]), "fallback": float(metrics["thick/fallback"]),
               "alignment": alignment(changed, held["event"].astype(bool), first),
               "seconds": round(time.time() - t0)}  # fmt: skip
        print(json.dumps({k: v for k, v in rec.items() if k != "train_change_rate_curve"}), flush=True)
        results.append(rec)
    acting = [r["acting_change_rate"] for r in results]
    monotone = bool(all(x >= y for x, y in zip(acting, acting[1:], strict=False)))
    summary = {"config": vars(a), "results": results, "monotone_decreasing": monotone,
               "event_rate_heldout": float(held["event"][~held["is_first"]].mean()),
               "total_seconds": round(time.time() - t_start), "jax": jax.__version__}  # fmt: skip
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    lines = ["| beta | acting change rate (held-out) | train-batch change rate (last 50 updates) | HL valid fraction | "
             "precision +-1 | recall +-1 | base rate | lift |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        al = r["alignment"]
        lines.append(f"| {r['beta']:g} | {r['acting_change_rate']:.3f} | {r['train_change_rate_last50']:.3f} | "
                     f"{r['hl_valid_frac']:.3f} | {al['precision']:.3f} | {al['recall']:.3f} | {al['base_rate']:.3f} | "
                     f"{al['lift']:.2f} |")  # fmt: skip
    print("\n".join(lines) + f"\n\nmonotone decreasing acting change rate: {summary['monotone_decreasing']}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        ax[0].semilogx([r["beta"] for r in results], acting, "o-", label="acting (held-out)")
        ax[0].semilogx(
            [r["beta"] for r in results], [r["train_change_rate_last50"] for r in results], "s--", label="train batch"
        )
        ax[0].set_xlabel("beta (--sparse-scale)")
        ax[0].set_ylabel("change rate")
        ax[0].legend()
        for r in results:
            c = np.convolve(r["train_change_rate_curve"], np.ones(20) / 20, "valid")
            ax[1].plot(c, label=f"beta {r['beta']:g}")
        ax[1].set_xlabel("update")
        ax[1].set_ylabel("train-batch change rate (20-update mean)")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(a.out + ".png", dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
