"""Does the world model of a Crafter run promise more reward for an action than the data shows? (model exploitation)

    python benchmark/probes/imagined_reward.py runs/<run>/checkpoint.ckpt [--windows 256] [--last 20000]

Needs a checkpoint written with its replay (`checkpoint.ckpt.replay.npz`, the default). For replayed states s_t (the
posterior the model infers from the data) it compares, per action a:
  data       E[r_{t+1} | a_t = a]                    the reward that actually followed a in the replay
  model      E[rew(s') ], s' = prior after (s_t, a)  one imagined step with a forced, over the states where a was taken
  model_all  the same over all states                (what imagination sees when the actor tries a anywhere)
  policy     pi(a | s_t) averaged over the states     (what the actor does now)
A model that learned the reward gives model ~ data; model >> data for the action the actor committed to means the
actor exploits a reward the world model invents; model ~ model_all ~ constant means the model has not learned which
actions pay. `cont_all` is the imagined continue probability after a (incl. the discount) and `adv1_all` the
one-step advantage r(s') + c(s') v(s') - v(s) with the online critic, both over all states: the push the actor feels
toward a (where the rewards carry no signal, differences here come from the continue head and the critic). `post` is
the reward head on the posterior after the step (the model sees the outcome), and the last line compares both at the
steps where an achievement was unlocked. dreamerv3_jax.py checkpoints only.
"""

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from saved_agent import load_agent  # noqa: E402  (benchmark/probes/saved_agent.py)

NAMES = ["noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone", "place_table",
         "place_furnace", "place_plant", "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe", "make_wood_sword",
         "make_stone_sword", "make_iron_sword"]  # fmt: skip  (crafter's action order)


def load_replay(path: str) -> tuple:
    """(data arrays (E, C, ...), count (E,), pos (E,), capacity) of a `checkpoint.ckpt.replay.npz`."""
    rs = np.load(path)
    return {k[5:]: rs[k] for k in rs.files if k.startswith("data_")}, rs["count"], rs["pos"], int(rs["capacity"])


def windows(data, count, pos, cap, n: int, length: int, rng, first: int = 0, last: int = 0) -> dict:
    """n windows of `length` steps, from the steps [first, first + last) of each env's stream in time order (last=0:
    to the end); the default is every written step."""
    env = rng.integers(0, len(count), n)
    held = np.minimum(count[env], cap)  # steps still in the buffer, oldest at (pos - held)
    hi = np.minimum(held, first + last) if last else held
    start = first + (rng.random(n) * (hi - first - length)).astype(int)
    idx = (pos[env][:, None] - held[:, None] + start[:, None] + np.arange(length)) % cap  # (n, length)
    return {k: v[env[:, None], idx] for k, v in data.items()}


def newest_windows(checkpoint: str, n: int, length: int, last: int, seed: int) -> dict:
    """n windows of `length` steps from the newest `last` steps of each env of `<checkpoint>.replay.npz`."""
    data, count, pos, cap = load_replay(checkpoint + ".replay.npz")
    held = int(np.minimum(count, cap).min())
    return windows(data, count, pos, cap, n, length, np.random.default_rng(seed), first=max(0, held - last))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _predict(mod, agent, samples, zero_start, params, obs, action, first, deter, stoch, k_obs, k_img):
    """The model's side of diagnose() in one compiled program (cached across calls with the same shapes): the reward
    head on the posterior after each step (N,), one imagined step per forced action (A, N), and the policy (A, N)."""
    p, b = params, mod.bins()
    embed = agent.enc.apply({"params": p["enc"]}, obs[:, 1:])
    first = first[:, 1:]
    if zero_start:  # a model that did not write the stored latents starts every window from zeros
        h0, z0 = jnp.zeros((len(embed), agent.deter)), jnp.zeros((len(embed), agent.stoch, agent.classes))
        first = first.at[:, 0].set(True)
    else:
        h0, z0 = deter[:, 0].astype(jnp.float32), jax.nn.one_hot(stoch[:, 0], agent.classes)
    h, z, _ = agent.observe(p, h0, z0, embed, action[:, :-1], first, k_obs)
    post_rew = mod.twohot_mean(agent.head("rew", p["rew"], agent.feat(h, z)), b)[:, 1:].ravel()  # rew(s_{t+1})
    h, z = h[:, :-1].reshape(-1, agent.deter), z[:, :-1].reshape(-1, agent.stoch, agent.classes)  # states s_1..s_{T-1}

    def one(a, k):  # one imagined step with action a forced, averaged over prior samples: reward, continue, value
        onehot = jnp.broadcast_to(jax.nn.one_hot(a, agent.act_dim), (h.shape[0], agent.act_dim))
        hn = agent.core(p, h, z, onehot)
        logits = agent.prior(p, hn)
        zs = jax.vmap(lambda kk: mod.sample_onehot(kk, logits))(jax.random.split(k, samples))

        def heads(zz):
            f = agent.feat(hn, zz)
            rew = mod.twohot_mean(agent.head("rew", p["rew"], f), b)
            con = jax.nn.sigmoid(agent.head("con", p["con"], f)[..., 0])
            return rew, con, mod.twohot_mean(agent.head("critic", p["critic"], f), b)

        return jax.tree.map(lambda x: x.mean(0), jax.vmap(heads)(zs))  # each (N,)

    model, cont, value = jax.lax.map(lambda ak: one(*ak), (jnp.arange(agent.act_dim), jax.random.split(k_img, agent.act_dim)))
    _, logp, _ = agent.policy(p, agent.feat(h, z))
    pi = jnp.exp(jax.vmap(lambda i: logp(jax.nn.one_hot(i, agent.act_dim)))(jnp.arange(agent.act_dim)))
    v0 = mod.twohot_mean(agent.head("critic", p["critic"], agent.feat(h, z)), b)  # v(s_t), (N,)
    q1 = model + cont * value - v0[None]  # one-step advantage r(s') + c(s') v(s') - v(s): what the actor is pushed by
    return post_rew, model, pi, cont, q1


def diagnose(mod, agent, params, batch, seed: int = 0, samples: int = 4, zero_start: bool = False) -> dict:
    """Per action: data reward after it, one-step imagined reward, posterior reward, policy; and the reward events."""
    arrays = [jnp.asarray(batch[k]) for k in ("obs", "action", "is_first", "deter", "stoch")]
    keys = jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1)  # observe, imagine
    post_rew, model, pi, cont, q1 = map(np.asarray, _predict(mod, agent, samples, zero_start, params, *arrays, *keys))
    act = batch["action"][:, 1:-1].argmax(-1).ravel()  # a_t taken at s_t
    rew_next = batch["reward"][:, 2:].ravel()  # r_{t+1}
    ok = ~(batch["is_last"][:, 1:-1] | batch["is_first"][:, 2:]).ravel()  # a real transition follows s_t
    rnd = lambda v: round(float(v), 4)
    rows = {}
    for i, name in enumerate(NAMES[: agent.act_dim]):
        sel = ok & (act == i)
        rows[name] = {"n": int(sel.sum()), "data": rnd(rew_next[sel].mean()) if sel.any() else None,
                      "data_p_achv": rnd((rew_next[sel] > 0.5).mean()) if sel.any() else None,
                      "model": rnd(model[i, sel].mean()) if sel.any() else None,
                      "post": rnd(post_rew[sel].mean()) if sel.any() else None,
                      "model_all": rnd(model[i, ok].mean()), "policy": rnd(pi[i, ok].mean()),
                      "cont_all": rnd(cont[i, ok].mean()), "adv1_all": rnd(q1[i, ok].mean())}  # fmt: skip
    # the steps where an achievement was unlocked (r > 0.5): does the model see them coming, or only once they happened?
    hit = ok & (rew_next > 0.5)
    taken = model[act, np.arange(len(act))]  # imagined reward for the action that was actually taken
    events = {"n": int(hit.sum()), "post_at_event": rnd(post_rew[hit].mean()) if hit.any() else None,
              "model_at_event": rnd(taken[hit].mean()) if hit.any() else None,
              "post_elsewhere": rnd(post_rew[ok & ~hit].mean()), "model_elsewhere": rnd(taken[ok & ~hit].mean())}  # fmt: skip
    return {"actions": rows, "events": events}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--windows", type=int, default=256, help="replay windows of batch-length + 1 steps")
    ap.add_argument("--last", type=int, default=20000, help="sample windows from the newest N steps of each env")
    ap.add_argument("--samples", type=int, default=4, help="prior samples per imagined step")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    mod, agent, params, args = load_agent(a.checkpoint, scripts=("dreamerv3_jax",))
    batch = newest_windows(a.checkpoint, a.windows, args.batch_length + 1, a.last, a.seed)
    out = diagnose(mod, agent, params, batch, a.seed, a.samples)
    print(f"{'action':<20}{'n':>6}{'data':>9}{'P(ach)':>9}{'model':>9}{'post':>9}{'model_all':>11}{'policy':>9}"
          f"{'cont_all':>10}{'adv1_all':>10}")
    fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
    for name, r in out["actions"].items():
        print(f"{name:<20}{r['n']:>6}{fmt(r['data'])}{fmt(r['data_p_achv'])}{fmt(r['model'])}{fmt(r['post'])}"
              f"{r['model_all']:11.3f}{r['policy']:9.3f}{r['cont_all']:10.4f}{r['adv1_all']:10.4f}")  # fmt: skip
    print("reward events:", out["events"])
    print(json.dumps({"checkpoint": a.checkpoint, "windows": a.windows, "last": a.last, **out}))


if __name__ == "__main__":
    main()
