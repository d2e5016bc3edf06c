"""Does the world model of a Crafter run promise more reward for an action than the data shows? (model exploitation)

    python benchmark/imagined_reward.py runs/<run>/checkpoint.ckpt [--windows 256] [--last 20000]

Needs a checkpoint written with its replay (`checkpoint.ckpt.replay.npz`, the default). For replayed states s_t (the
posterior the model infers from the data) it compares, per action a:
  data       E[r_{t+1} | a_t = a]                    the reward that actually followed a in the replay
  model      E[rew(s') ], s' = prior after (s_t, a)  one imagined step with a forced, over the states where a was taken
  model_all  the same over all states                (what imagination sees when the actor tries a anywhere)
  policy     pi(a | s_t) averaged over the states     (what the actor does now)
A model that learned the reward gives model ~ data; model >> data for the action the actor committed to means the
actor exploits a reward the world model invents; model ~ model_all ~ constant means the model has not learned which
actions pay. `post` is the reward head on the posterior after the step (the model sees the outcome), and the last
line compares both at the steps where an achievement was unlocked. dreamerv3_jax.py checkpoints only.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from saved_agent import load_agent  # noqa: E402  (benchmark/saved_agent.py)

NAMES = ["noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone", "place_table",
         "place_furnace", "place_plant", "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe", "make_wood_sword",
         "make_stone_sword", "make_iron_sword"]  # fmt: skip  (crafter's action order)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--windows", type=int, default=256, help="replay windows of batch-length + 1 steps")
    ap.add_argument("--last", type=int, default=20000, help="sample windows from the newest N steps of each env")
    ap.add_argument("--samples", type=int, default=4, help="prior samples per imagined step")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    mod, agent, params, args = load_agent(a.checkpoint, scripts=("dreamerv3_jax",))
    rs = np.load(a.checkpoint + ".replay.npz")
    data = {k[5:]: rs[k] for k in rs.files if k.startswith("data_")}
    count, pos, cap = rs["count"], rs["pos"], int(rs["capacity"])
    L, rng = args.batch_length + 1, np.random.default_rng(a.seed)
    env = rng.integers(0, len(count), a.windows)
    n_env = np.minimum(count[env], min(cap, a.last))  # newest steps of each sampled env
    start = (pos[env] - n_env + (rng.random(a.windows) * (n_env - L)).astype(int)) % cap
    idx = (start[:, None] + np.arange(L)) % cap  # (W, L)
    batch = {k: v[env[:, None], idx] for k, v in data.items()}

    p, b = params, mod.bins()
    embed = agent.enc.apply({"params": p["enc"]}, jnp.asarray(batch["obs"][:, 1:]))
    h0 = jnp.asarray(batch["deter"][:, 0], jnp.float32)
    z0 = jax.nn.one_hot(jnp.asarray(batch["stoch"][:, 0]), agent.classes)
    key = jax.random.PRNGKey(a.seed)
    h, z, _ = agent.observe(p, h0, z0, embed, jnp.asarray(batch["action"][:, :-1]), jnp.asarray(batch["is_first"][:, 1:]), key)
    post_rew = mod.twohot_mean(agent.head("rew", p["rew"], agent.feat(h, z)), b)[:, 1:].ravel()  # rew(s_{t+1}), posterior
    h, z = h[:, :-1].reshape(-1, agent.deter), z[:, :-1].reshape(-1, agent.stoch, agent.classes)  # states s_1..s_{T-1}
    act = batch["action"][:, 1:-1].argmax(-1).ravel()  # a_t taken at s_t
    rew_next = batch["reward"][:, 2:].ravel()  # r_{t+1}
    ok = ~(batch["is_last"][:, 1:-1] | batch["is_first"][:, 2:]).ravel()  # a real transition follows s_t

    a_samples = a.samples

    @jax.jit
    def imagined(h, z, key):  # (N, D), (N, S, K) -> (A, N) expected reward after one step with each action forced
        def one(a, k):
            onehot = jnp.broadcast_to(jax.nn.one_hot(a, agent.act_dim), (h.shape[0], agent.act_dim))
            hn = agent.core(p, h, z, onehot)
            logits = agent.prior(p, hn)
            zs = jax.vmap(lambda kk: mod.sample_onehot(kk, logits))(jax.random.split(k, a_samples))
            r = jax.vmap(lambda zz: mod.twohot_mean(agent.head("rew", p["rew"], agent.feat(hn, zz)), b))(zs)
            return r.mean(0)

        return jax.lax.map(lambda ak: one(*ak), (jnp.arange(agent.act_dim), jax.random.split(key, agent.act_dim)))

    model = np.asarray(imagined(h, z, jax.random.PRNGKey(a.seed + 1)))  # (A, N)
    _, logp, _ = agent.policy(p, agent.feat(h, z))
    pi = np.asarray(jnp.exp(jax.vmap(lambda i: logp(jax.nn.one_hot(i, agent.act_dim)))(jnp.arange(agent.act_dim))))  # (A, N)
    rows = {}
    for i, name in enumerate(NAMES[: agent.act_dim]):
        sel = ok & (act == i)
        rows[name] = {
            "n": int(sel.sum()),
            "data": round(float(rew_next[sel].mean()), 4) if sel.any() else None,
            "data_p_achv": round(float((rew_next[sel] > 0.5).mean()), 4) if sel.any() else None,
            "model": round(float(model[i, sel].mean()), 4) if sel.any() else None,
            "post": round(float(post_rew[sel].mean()), 4) if sel.any() else None,
            "model_all": round(float(model[i, ok].mean()), 4),
            "policy": round(float(pi[i, ok].mean()), 4),
        }
    print(f"{'action':<20}{'n':>6}{'data':>9}{'P(ach)':>9}{'model':>9}{'post':>9}{'model_all':>11}{'policy':>9}")
    for name, r in rows.items():
        fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
        print(f"{name:<20}{r['n']:>6}{fmt(r['data'])}{fmt(r['data_p_achv'])}{fmt(r['model'])}{fmt(r['post'])}"
              f"{r['model_all']:11.3f}{r['policy']:9.3f}")  # fmt: skip
    # the steps where an achievement was unlocked (r >= 0.9): does the model see them coming, or only once they happened?
    hit = ok & (rew_next > 0.5)
    taken = model[act, np.arange(len(act))]  # imagined reward for the action that was actually taken
    events = {"n": int(hit.sum()), "post_at_event": round(float(post_rew[hit].mean()), 4) if hit.any() else None,
              "model_at_event": round(float(taken[hit].mean()), 4) if hit.any() else None,
              "post_elsewhere": round(float(post_rew[ok & ~hit].mean()), 4),
              "model_elsewhere": round(float(taken[ok & ~hit].mean()), 4)}  # fmt: skip
    print("reward events:", events)
    print(json.dumps({"checkpoint": a.checkpoint, "windows": a.windows, "last": a.last, "actions": rows, "events": events}))


if __name__ == "__main__":
    main()
