"""Tests of thick_dreamer_jax.py: the properties of THICK's C-RSSM, high-level model and value (values, not only
shapes), plus subprocess smoke runs (CartPole-v1 and Crafter, debug preset) with save -> evaluate and checkpoint -> resume."""

import difflib
import inspect
import os
import re
import signal
import time

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dreamerv3_jax as base
import thick_dreamer_jax as td

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = jnp.float32


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


SHARED_HELPERS = ["symlog", "symexp", "twohot_bins", "twohot_encode", "twohot_mean", "twohot_loss",
                  "unimix_logits", "sample_onehot", "categorical_kl", "categorical_entropy", "lambda_return",
                  "percentile_update", "_after", "conv_im2col", "_conv_im2col_bwd", "conv5x5_maxpool", "upsample_conv5x5",
                  "rmsnorm_silu", "_rmsnorm_silu_fwd_math", "_rmsnorm_silu_bwd", "phase_max", "_phase_max_bwd",
                  "actor_dist", "agc_clip", "laprop", "learning_rate_at", "updates_due", "DataParallel",
                  "init_multihost", "raise_if_not_finite", "make_writer", "print_devices", "save_and_evaluate",
                  "Progress", "log_episodes", "Checkpoints", "env_spaces"]  # fmt: skip


def test_shared_helpers_are_the_base_copies():
    """THICK copies the base's numeric helpers unchanged (fork-and-modify); identical source means tests/test_dreamerv3.py's
    value tests cover these copies too, and a fix made in one file but not the other fails here."""
    changed = [n for n in SHARED_HELPERS if inspect.getsource(getattr(td, n)) != inspect.getsource(getattr(base, n))]
    assert not changed, f"helpers that differ from dreamerv3_jax.py: {changed}"


def test_every_change_against_the_base_is_tagged():
    """`diff dreamerv3_jax.py thick_dreamer_jax.py` is meant to read as exactly what THICK adds: every hunk of the
    unified diff (3 lines of context, as `diff -u`) carries a `THICK` tag in a changed line or its context."""
    with open(os.path.join(ROOT, "dreamerv3_jax.py")) as f:
        a = f.read().splitlines()
    with open(os.path.join(ROOT, "thick_dreamer_jax.py")) as f:
        b = f.read().splitlines()
    hunks, untagged = 0, []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(3):
        hunks += 1
        lines = [line for _, i1, i2, j1, j2 in group for line in a[i1:i2] + b[j1:j2]]
        if not any("THICK" in line for line in lines):
            untagged.append(f"base line {group[0][1] + 1}, THICK line {group[0][3] + 1}")
    assert hunks > 10 and not untagged, f"diff hunks without a THICK tag: {untagged}"


def make_agent(**kw):
    """A debug-size agent for CartPole-like spaces (4-dim observations, 2 actions); no env, no training loop."""
    args = td.Args(env_id="CartPole-v1", model_size="debug", batch_size=2, batch_length=6, imag_horizon=3, **kw)
    args.train_ratio, args.learning_starts = 8.0, 0
    return td.Agent(args, gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))


@pytest.fixture(scope="module")
def agent():
    return make_agent()


@pytest.fixture(scope="module")
def state(agent):
    return agent.init(jax.random.PRNGKey(0))  # jitted


def random_batch(agent, seed=0, B=2, T=7):
    rng = np.random.default_rng(seed)
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    return {"obs": rng.normal(size=(B, T, 4)).astype(np.float32),
            "action": np.eye(agent.act_dim, dtype=np.float32)[rng.integers(0, agent.act_dim, (B, T))],
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": first,
            "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool),
            "deter": np.zeros((B, T, agent.deter), np.float16), "stoch": np.zeros((B, T, agent.stoch), np.uint8),
            "context": np.zeros((B, T, agent.ctx), np.float32)}  # fmt: skip


def with_gate_bias(params, value):
    """Params whose gate pre-activation biases (the first C of the [gate | candidate] Linear) are all `value`."""
    params = jax.tree.map(lambda x: x, params)  # a shallow copy of the nested dicts
    bias = params["rssm"]["gate"]["bias"]
    params["rssm"]["gate"]["bias"] = bias.at[: bias.shape[0] // 2].set(value)
    return params


def leaves_abs(tree):
    return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------------------------------------------------
# 9.1 - 9.4: gate algebra, exact copy, straight-through gradient, sparsity loss, noise
# ---------------------------------------------------------------------------------------------------------------------


def test_gate_algebra():
    s = jnp.linspace(-3, 3, 101)
    c_new, theta, lam = td.gate_math(s, jnp.zeros_like(s), jnp.zeros_like(s))
    assert bool(jnp.all(lam >= 0)) and bool(jnp.all(lam < 1))
    assert set(np.unique(np.asarray(theta)).tolist()) <= {0.0, 1.0}  # exactly 0 or 1 in the forward pass
    np.testing.assert_array_equal(np.asarray(theta) == 1, np.asarray(s) > 0)
    np.testing.assert_array_equal(np.asarray(lam) > 0, np.asarray(s) > 0)
    assert c_new.dtype == jnp.float32 and td.gate_math(s.astype(jnp.bfloat16), s, s)[0].dtype == jnp.float32


def test_exact_copy_when_gates_closed_and_candidate_when_open(agent, state):
    params = with_gate_bias(state.params, -1e3)
    step = jax.jit(agent.context)
    rng = np.random.default_rng(0)
    c0 = c = jnp.asarray(rng.normal(size=(3, agent.ctx)), F32)
    for t in range(20):
        z = jax.nn.one_hot(rng.integers(0, agent.classes, (3, agent.stoch)), agent.classes)
        a = jax.nn.one_hot(rng.integers(0, agent.act_dim, (3,)), agent.act_dim)
        c, theta, lam, _, _ = step(params, z, a, c, jax.random.PRNGKey(t))
        assert float(jnp.abs(lam).max()) == 0 and float(theta.max()) == 0
    np.testing.assert_array_equal(np.asarray(c), np.asarray(c0))  # bitwise copy over the whole rollout
    c_new, _, _ = td.gate_math(jnp.array([50.0, -1.0]), jnp.array([0.3, 0.2]), jnp.array([0.7, 0.7]))
    assert float(c_new[0]) == float(jnp.tanh(jnp.float32(0.3)))  # Lambda = 1 in float32: c = r
    assert np.float32(c_new[1]) == np.float32(0.7)


def test_straight_through_gradient_formula():
    s = jnp.array([-2.0, -0.3, -1e-3, 1e-3, 0.2, 0.9, 2.5])
    g = jax.grad(lambda s: jnp.sum(td.gate_math(s, jnp.zeros_like(s), jnp.zeros_like(s))[1]))(s)
    np.testing.assert_allclose(np.asarray(g), np.asarray((1 - jnp.tanh(s) ** 2) * (s > 0)), rtol=1e-6, atol=0)


def test_sparse_loss_value_and_hinge():
    theta = jnp.zeros((2, 4, 2)).at[0, 1].set(1.0).at[0, 2, 0].set(1.0).at[1].set(1.0)  # S = (1.5, 4)
    np.testing.assert_allclose(float(td.sparse_loss(theta, 1.0)), (1.5 + 4) / 2 / 4, rtol=1e-6)
    np.testing.assert_allclose(float(td.sparse_loss(theta, 2.0)), (2 + 4) / 2 / 4, rtol=1e-6)


def test_sparse_loss_gradient_reaches_gates_only_when_open(agent, state):
    rng = np.random.default_rng(1)
    T, B = 6, 3
    zs = jax.nn.one_hot(rng.integers(0, agent.classes, (T, B, agent.stoch)), agent.classes)
    acts = jax.nn.one_hot(rng.integers(0, agent.act_dim, (T, B)), agent.act_dim)

    @jax.jit
    def grads(rssm, free):
        def loss(rssm):
            c, thetas = jnp.zeros((B, agent.ctx)), []
            for t in range(T):
                c, theta, _, _, _ = agent.context({"rssm": rssm}, zs[t], acts[t], c, jax.random.PRNGKey(t), 0.0)
                thetas.append(theta)
            return td.sparse_loss(jnp.stack(thetas, 1), free)

        return jax.grad(loss)(rssm)["gate"]

    assert leaves_abs(grads(state.params["rssm"], 0.0)) > 0  # about half the gates start open
    assert leaves_abs(grads(state.params["rssm"], 1e6)) == 0  # S_b below the free budget: no gradient
    assert leaves_abs(grads(with_gate_bias(state.params, -1e3)["rssm"], 0.0)) == 0  # all closed, sigma = 0


def test_noise_open_frequency_matches_normal_cdf(agent, state):
    params = jax.tree.map(lambda x: x, state.params)
    params["rssm"]["gate"]["kernel"] = jnp.zeros_like(params["rssm"]["gate"]["kernel"])
    params = with_gate_bias(params, -0.05)  # s = -0.05 + 0.1 * eps
    n = 50_000
    z, a, c = jnp.zeros((n, agent.stoch, agent.classes)), jnp.zeros((n, agent.act_dim)), jnp.zeros((n, agent.ctx))
    step = jax.jit(agent.context)
    _, theta, _, _, _ = step(params, z, a, c, jax.random.PRNGKey(0))
    expect = float(jax.scipy.stats.norm.cdf(-0.5))  # Phi(s / sigma) = 0.3085
    assert abs(expect - 0.3085) < 1e-3 and abs(float(theta.mean()) - expect) < 0.01
    # sigma = 0 (noise scale 0): deterministic given the inputs, whatever the key
    x = step(params, z[:8], a[:8], c[:8] + 0.3, jax.random.PRNGKey(1), 0.0)
    y = step(params, z[:8], a[:8], c[:8] + 0.3, jax.random.PRNGKey(2), 0.0)
    for u, v in zip(x, y, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------------------------------------------------
# 9.8 - 9.10: target extraction
# ---------------------------------------------------------------------------------------------------------------------


def extract(first, g, term, gamma=0.9, rew=None):
    T, S, K, C, A = len(first), 2, 3, 2, 4
    t = jnp.arange(T, dtype=F32)
    logits = (t[:, None, None] + jnp.arange(S * K, dtype=F32).reshape(S, K) / 10)[None]  # distinct per step
    stoch = jnp.broadcast_to(t[:, None] * 100, (T, S * K))[None]
    ctx = jnp.broadcast_to(t[:, None] * 10, (T, C))[None]
    act = (jax.nn.one_hot(jnp.arange(T) % A, A) * (1 + t[:, None]))[None]
    rew = jnp.asarray(2.0 ** np.arange(T) if rew is None else rew, F32)[None]
    ev = jnp.asarray(g, bool)[None] | jnp.asarray(term, bool)[None]
    out = jax.jit(td.extract_targets, static_argnums=7)(
        ev, jnp.asarray(first, bool)[None], logits, stoch, ctx, act, rew, gamma
    )
    data = {"logits": logits[0], "stoch": stoch[0], "ctx": ctx[0], "act": act[0], "rew": np.asarray(rew[0])}
    return {k: np.asarray(v[0]) for k, v in out.items()}, data


def discounted(rew, t, tau, gamma):
    return sum(gamma ** (j - t - 1) * rew[j] for j in range(t + 1, tau + 1))


def test_target_extraction_hand_made_sequence_1():
    gamma = 0.9
    out, d = extract([1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0, 1, 0], [0] * 8, gamma)
    rew = d["rew"]
    np.testing.assert_array_equal(out["mask"], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["delta"][:6], [1, 0, 3, 2, 1, 0])
    before, after = [1, 1, 5, 5, 5, 5], [2, 2, 6, 6, 6, 6]
    for t in range(6):
        np.testing.assert_array_equal(out["z"][t], np.asarray(d["logits"][before[t]]))  # posterior logits at tau - 1
        np.testing.assert_array_equal(out["a"][t], np.asarray(d["act"][before[t]]))  # a_{tau-1}
        np.testing.assert_array_equal(out["z_prev"][t], np.asarray(d["stoch"][before[t]]))
        np.testing.assert_array_equal(out["c_next"][t], np.asarray(d["ctx"][after[t]]))  # c_tau
        np.testing.assert_allclose(out["R"][t], discounted(rew, t, after[t], gamma), rtol=1e-6)
    np.testing.assert_allclose(out["R"][0], rew[1] + gamma * rew[2], rtol=1e-6)
    np.testing.assert_allclose(out["R"][1], rew[2], rtol=1e-6)
    np.testing.assert_allclose(out["R"][2], rew[3] + gamma * rew[4] + gamma**2 * rew[5] + gamma**3 * rew[6], rtol=1e-6)
    np.testing.assert_allclose(out["R"][5], rew[6], rtol=1e-6)
    for k in ("delta", "R", "z", "a", "c_next", "z_prev"):
        assert np.all(out[k][6:] == 0)  # invalid entries are zeros (no NaN, no sentinel)


def test_target_extraction_hand_made_sequence_2_episode_boundary():
    gamma = 0.9
    first = [1, 0, 0, 0, 1, 0, 0, 0]
    out, d = extract(first, [1, 0, 1, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0], gamma)
    rew = d["rew"]
    np.testing.assert_array_equal(out["mask"], [1, 1, 1, 0, 1, 1, 0, 0])
    assert out["delta"][2] == 0 and out["R"][2] == rew[3]  # the terminal step is an event, with its reward
    np.testing.assert_array_equal(out["a"][2], np.asarray(d["act"][2]))
    assert out["delta"][4] == 1
    np.testing.assert_allclose(out["R"][4], rew[5] + gamma * rew[6], rtol=1e-6)
    for t in np.flatnonzero(out["mask"]):  # no target crosses an is_first
        tau = t + int(out["delta"][t]) + 1
        assert not any(first[k] for k in range(t + 1, tau + 1))


def test_target_extraction_matches_python_loop_and_reward_sanity():
    rng = np.random.default_rng(3)
    B, T, S, K, C, A = 4, 12, 2, 3, 2, 3
    first = rng.random((B, T)) < 0.15
    ev = rng.random((B, T)) < 0.3
    logits, stoch = rng.normal(size=(B, T, S, K)), rng.normal(size=(B, T, S * K))
    ctx, act = rng.normal(size=(B, T, C)), rng.normal(size=(B, T, A))
    f = jax.jit(td.extract_targets, static_argnums=7)
    for gamma, rew in ((0.97, rng.normal(size=(B, T))), (1.0, np.ones((B, T)))):
        out = f(*map(jnp.asarray, (ev, first, logits, stoch, ctx, act, rew)), gamma)
        out = {k: np.asarray(v) for k, v in out.items()}
        for b in range(B):
            for t in range(T):
                tau = next((j for j in range(t + 1, T) if first[b, j] or ev[b, j]), None)
                tau = None if tau is None or first[b, tau] else tau
                assert out["mask"][b, t] == (tau is not None)
                if tau is not None:
                    assert out["delta"][b, t] == tau - 1 - t
                    np.testing.assert_allclose(out["R"][b, t], discounted(rew[b], t, tau, gamma), rtol=1e-5)
                    np.testing.assert_allclose(out["z"][b, t], logits[b, tau - 1], rtol=1e-6)
                    np.testing.assert_allclose(out["c_next"][b, t], ctx[b, tau], rtol=1e-6)
        if gamma == 1.0:  # 9.10 reward sanity: gamma = 1 and r = 1 give R = Delta + 1
            m = out["mask"] > 0
            assert m.any()
            np.testing.assert_array_equal(out["R"][m], out["delta"][m] + 1)


# ---------------------------------------------------------------------------------------------------------------------
# 9.13, 9.17: value mixing and the fallback
# ---------------------------------------------------------------------------------------------------------------------


def test_mixing_psi_1_psi_0_and_one_step_long_value():
    rng = np.random.default_rng(0)
    ret, vl = jnp.asarray(rng.normal(size=(5, 7)), F32), jnp.asarray(rng.normal(size=(5, 7)), F32)
    t1, fb = td.mixed_target(ret, vl, 1.0, 3.0)
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(ret))  # psi = 1: the pure lambda-return
    assert not bool(fb)
    t0, _ = td.mixed_target(ret, vl, 0.0, 3.0)
    np.testing.assert_array_equal(np.asarray(t0), np.asarray(vl))  # psi = 0: V_long
    t9, _ = td.mixed_target(ret, vl, 0.9, 3.0)
    np.testing.assert_allclose(np.asarray(t9), np.asarray(0.9 * ret + 0.1 * vl), rtol=1e-6)
    gamma = 1 - 1 / 333
    r, v = jnp.asarray(rng.normal(size=10), F32), jnp.asarray(rng.normal(size=10), F32)
    np.testing.assert_allclose(np.asarray(td.long_value(r, 0.0, gamma, v, gamma)), np.asarray(r + gamma * v), rtol=1e-6)
    np.testing.assert_allclose(float(td.long_value(1.0, 3.0, 0.5, 2.0, 0.9)), 1.0 + 0.9**3 * 0.5 * 2.0, rtol=1e-6)
    g = jax.grad(lambda v: td.mixed_target(ret, v, 0.5, 1.0)[0].sum())(vl)
    assert float(jnp.abs(g).sum()) == 0  # V_long is stop-gradient inside the target


def test_fallback_without_change_events_is_the_pure_lambda_return():
    ret = jnp.arange(6.0).reshape(2, 3)
    target, fb = td.mixed_target(ret, jnp.full((2, 3), jnp.nan), 0.9, jnp.float32(0.0))  # even a NaN V_long is ignored
    np.testing.assert_array_equal(np.asarray(target), np.asarray(ret))
    assert bool(fb)


# ---------------------------------------------------------------------------------------------------------------------
# high-level model: posterior gradient (9.14), stop-gradient inputs, empty mask, HL step consistency (9.12)
# ---------------------------------------------------------------------------------------------------------------------


def hl_targets(agent, mask_p=0.5, seed=0, B=3, T=5):
    rng = np.random.default_rng(seed)
    S, K, C = agent.stoch, agent.classes, agent.ctx
    z = jax.nn.one_hot(rng.integers(0, K, (B, T, S)), K)
    c = jnp.asarray(rng.normal(size=(B, T, C)), F32)
    tg = {"mask": jnp.asarray(rng.random((B, T)) < mask_p, F32), "z": jnp.asarray(rng.normal(size=(B, T, S, K)), F32),
          "a": jax.nn.one_hot(rng.integers(0, agent.act_dim, (B, T)), agent.act_dim),
          "delta": jnp.asarray(rng.integers(0, 4, (B, T)), F32), "R": jnp.asarray(rng.normal(size=(B, T)), F32),
          "c_next": jnp.asarray(rng.normal(size=(B, T, C)), F32), "z_prev": z.reshape(B, T, S * K)}  # fmt: skip
    return tg, z, c


def test_hl_posterior_and_prior_get_gradient(agent, state):
    tg, z, c = hl_targets(agent)
    assert float(tg["mask"].sum()) > 0
    g = jax.jit(jax.grad(lambda p: agent.hl_loss(p, tg, z, c, jax.random.PRNGKey(1))[0]))(state.params["hl"])
    assert leaves_abs(g["post"]) > 0 and leaves_abs(g["prior"]) > 0
    for head in ("state", "action", "time"):
        assert leaves_abs(g[head]) > 0


def test_hl_loss_inputs_are_stop_gradient(agent, state):
    tg, z, c = hl_targets(agent)
    f = lambda z, c, tg: agent.hl_loss(state.params["hl"], tg, z, c, jax.random.PRNGKey(1))[0]
    gz, gc, gt = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(z, c, tg)
    assert leaves_abs(gz) == 0 and leaves_abs(gc) == 0 and leaves_abs(gt) == 0


def test_hl_loss_empty_mask_is_zero_and_finite(agent, state):
    tg, z, c = hl_targets(agent, mask_p=0.0)
    f = lambda p: agent.hl_loss(p, tg, z, c, jax.random.PRNGKey(1))
    (total, (terms, _)), g = jax.jit(jax.value_and_grad(lambda p: (f(p)[0], f(p)[1:]), has_aux=True))(state.params["hl"])
    assert float(total) == 0 and all(float(v) == 0 for v in terms.values())
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)) and leaves_abs(g) == 0


def test_hl_step_gate_reproduces_the_c_rssm_context_bitwise(agent, state):
    """Feeding the true (z_{tau-1}, a_{tau-1}, c_{tau-1}) and the observe step's noise key into the high level's coarse
    step reproduces the C-RSSM's c_tau bitwise (9.12); c_t does not depend on e_t or h_{t-1} (9.6)."""
    batch = random_batch(agent, T=6)
    p = state.params
    embed = agent.enc.apply({"params": p["enc"]}, jnp.asarray(batch["obs"][:, 1:]))
    B, T = embed.shape[:2]
    h0, z0, c0 = jnp.zeros((B, agent.deter)), jnp.zeros((B, agent.stoch, agent.classes)), jnp.zeros((B, agent.ctx))
    prev_a, first = jnp.asarray(batch["action"][:, :-1]), jnp.zeros((B, T), bool)
    key = jax.random.PRNGKey(7)
    h, z, _, thick = jax.jit(agent.observe)(p, h0, z0, c0, embed, prev_a, first, key)
    jump = jax.jit(agent.coarse_jump)
    for tau in (1, 3, 4):
        gate_key = jax.random.split(jax.random.split(key, T)[tau])[1]  # the key observe used for the gate at tau
        c_tau, zc = jump(p, z[:, tau - 1], prev_a[:, tau], thick["c"][:, tau - 1], gate_key, jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.asarray(c_tau), np.asarray(thick["c"][:, tau]))
        assert zc.shape == z[:, tau].shape

    # c_1 and the coarse prior at step 1 do not depend on h_0 or on the observation e_1 (no h in the coarse path)
    def coarse(h0, embed):
        _, _, _, th = agent.observe(p, h0, z0 + 0.5, c0 + 0.1, embed, prev_a, first, key)
        cp = agent.coarse_prior(p, th["c"], th["ez"], th["ea"])
        return jnp.sum(th["c"][:, 0] ** 2) + jnp.sum(cp[:, 0] * jnp.arange(agent.classes))

    gh, ge = jax.jit(jax.grad(coarse, argnums=(0, 1)))(h0 + 0.3, embed)
    assert float(jnp.abs(gh).sum()) == 0 and float(jnp.abs(ge[:, 0]).sum()) == 0


def test_fine_decoder_sees_the_context_coarse_decoder_not_h(agent, state):
    """Fine heads take [h, z, c], the fine decoder included; the coarse decoder takes [c, z] only."""
    p, n = state.params, 3
    h = jax.random.normal(jax.random.PRNGKey(1), (n, agent.deter))
    z = jax.nn.one_hot(jnp.zeros((n, agent.stoch), jnp.int32), agent.classes)
    c = jax.random.normal(jax.random.PRNGKey(2), (n, agent.ctx))
    fine = lambda c: jnp.sum(agent.dec.apply({"params": p["dec"]}, h, z, c) ** 2)
    assert float(jnp.abs(jax.grad(fine)(c)).sum()) > 0
    coarse = lambda c, z: agent.cdec.apply({"params": p["cdec"]}, c, z)  # h is not an argument
    assert coarse(c, z).shape == agent.dec.apply({"params": p["dec"]}, h, z, c).shape


def test_openl_video_coarse_panel_decodes_the_coarse_prior_sample_open_loop():
    """The video's 4th panel: coarse decoder on the posterior while observing, on z_c ~ p_c (not the fine prior's h-based
    sample) open-loop. Perturbing the coarse prior's output layer changes only the open-loop part of that panel."""
    args = td.Args(env_id="crafter", model_size="debug", batch_size=4, batch_length=8, imag_horizon=3)
    ag = td.Agent(args, gym.spaces.Box(0, 255, (16, 16, 3), np.uint8), gym.spaces.Discrete(3))
    params = ag.init(jax.random.PRNGKey(0)).params
    rng = np.random.default_rng(0)
    batch = {"obs": rng.integers(0, 256, (4, 9, 16, 16, 3), dtype=np.uint8),
             "action": np.eye(3, dtype=np.float32)[rng.integers(0, 3, (4, 9))], "is_first": np.zeros((4, 9), bool)}
    video = np.asarray(ag.openl_video(params, batch, jax.random.PRNGKey(1)))
    assert video.shape == (4, 8, 16, 64, 3) and video.dtype == np.uint8  # [truth | model | error | coarse]
    p2 = jax.tree.map(lambda x: x, params)
    out = p2["rssm"]["coarse_out"]
    p2["rssm"]["coarse_out"] = {**out, "bias": out["bias"] + 5.0 * jnp.sin(jnp.arange(out["bias"].shape[0]))}
    video2 = np.asarray(ag.openl_video(p2, batch, jax.random.PRNGKey(1)))
    coarse, coarse2 = video[..., 48:, :], video2[..., 48:, :]
    np.testing.assert_array_equal(coarse[:, :5], coarse2[:, :5])  # the 5 observed steps: posterior z
    assert np.any(coarse[:, 5:] != coarse2[:, 5:])  # open loop: the coarse prior's sample
    np.testing.assert_array_equal(video[..., :48, :], video2[..., :48, :])  # the fine panels do not use p_c


# ---------------------------------------------------------------------------------------------------------------------
# stop-gradients of the full loss (9.7), metric identities (9.16)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loss_grads(agent, state):
    batch = {k: jnp.asarray(v) for k, v in random_batch(agent, seed=5).items()}
    batch["is_terminal"] = batch["is_terminal"].at[0, 3].set(True)

    def parts(params):  # (L_HL, L_critic + L_coarse_critic) and the metrics
        _, (terms, metrics, _, _) = agent.loss(params, state.slow_critic, state.slow_ccritic, state.retnorm, batch,
                                               jax.random.PRNGKey(3))  # fmt: skip
        hl = sum(terms[n] for n in ("hl_z", "hl_a", "hl_delta", "hl_R", "hl_A_kl"))
        return jnp.stack([hl, terms["critic"] + terms["coarse_critic"]]), metrics

    jac, metrics = jax.jit(jax.jacrev(parts, has_aux=True))(state.params)  # one batched backward pass for both rows
    return jax.tree.map(lambda x: x[0], jac), jax.tree.map(lambda x: x[1], jac), metrics


def test_hl_loss_trains_only_the_high_level_model(loss_grads):
    g_hl, _, metrics = loss_grads
    assert float(metrics["thick/hl_valid_frac"]) > 0
    for name, tree in g_hl.items():
        if name == "hl":
            assert leaves_abs(tree["post"]) > 0  # 9.14 in the full loss
        else:
            assert leaves_abs(tree) == 0, name  # encoder, C-RSSM and all heads: exactly zero


def test_thick_critic_loss_trains_only_the_critics(loss_grads):
    _, g_critic, _ = loss_grads
    assert leaves_abs(g_critic["critic"]) > 0 and leaves_abs(g_critic["ccritic"]) > 0
    for name, tree in g_critic.items():
        if name not in ("critic", "ccritic"):
            assert leaves_abs(tree) == 0, name  # world model and high-level model get nothing from the critics


def test_change_rate_metrics_are_consistent(loss_grads, agent):
    _, _, m = loss_grads
    per_dim = np.array([float(m[f"thick/open_rate/{i}"]) for i in range(agent.ctx)])
    np.testing.assert_allclose(per_dim.mean(), float(m["thick/gate_activity"]), rtol=1e-5)
    assert float(m["thick/gate_activity"]) <= float(m["thick/change_rate"]) <= 1
    assert 0 < float(m["thick/lambda_when_open"]) < 1
    assert float(m["thick/fallback"]) in (0.0, 1.0)
    assert all(bool(jnp.isfinite(v)) for v in jax.tree.leaves(m))


def test_change_rate_counts_only_valid_steps_without_replay_context():
    """Without replay context t = 0 re-loads c (not a change): with every gate forced open the rate is exactly 1."""
    ag = make_agent(replay_context=0, gate_noise=0.0)
    st = ag.init(jax.random.PRNGKey(0))
    params = with_gate_bias(st.params, 50.0)
    batch = {k: jnp.asarray(v) for k, v in random_batch(ag, seed=2).items()}
    loss = jax.jit(ag.loss)  # one compilation instead of the loss's ops one by one
    _, (_, m, _, _) = loss(params, st.slow_critic, st.slow_ccritic, st.retnorm, batch, jax.random.PRNGKey(1))
    assert float(m["thick/change_rate"]) == 1.0 and float(m["thick/gate_activity"]) == 1.0
    assert all(float(m[f"thick/open_rate/{i}"]) == 1.0 for i in range(ag.ctx))


# ---------------------------------------------------------------------------------------------------------------------
# 9.5: a very large beta drives the change rate to ~0; then the mask is empty and the high-level losses are 0 and finite
# ---------------------------------------------------------------------------------------------------------------------


def test_large_beta_closes_the_gates_toy_run(agent, state):
    """Toy sequence model: encoder + C-RSSM trained with Adam on the KL between posterior and prior plus 1e3 * L_sparse
    (free budget 0) on a fixed random batch; the change rate falls to ~0, the high-level mask empties."""
    batch = {k: jnp.asarray(v) for k, v in random_batch(agent, seed=2, B=4, T=17).items()}
    embed_obs, prev_a, first = batch["obs"][:, 1:], batch["action"][:, :-1], batch["is_first"][:, 1:]
    B, T = first.shape
    h0, z0, c0 = jnp.zeros((B, agent.deter)), jnp.zeros((B, agent.stoch, agent.classes)), jnp.zeros((B, agent.ctx))
    beta = 1e3

    def observe(p, key):
        embed = agent.enc.apply({"params": p["enc"]}, embed_obs)
        return agent.observe(p, h0, z0, c0, embed, prev_a, first, key)

    def loss(p, key):
        h, z, post, thick = observe(p, key)
        kl = td.categorical_kl(post, agent.prior(p, h, thick["c"])).mean()
        return kl + beta * td.sparse_loss(thick["theta"], 0.0), thick["theta"]

    opt = optax.adam(3e-2)
    p = {"enc": state.params["enc"], "rssm": state.params["rssm"]}

    @jax.jit
    def train(p, key):
        def body(carry, k):
            p, o = carry
            (_, theta), g = jax.value_and_grad(loss, has_aux=True)(p, k)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), jnp.any(theta > 0, -1).mean()

        (p, _), rates = jax.lax.scan(body, (p, opt.init(p)), jax.random.split(key, 60))
        return p, rates

    p, rates = train(p, jax.random.PRNGKey(0))
    assert float(rates[0]) > 0.5  # gates start about half open: nearly every step changes the context
    h, z, post, thick = jax.jit(observe)(p, jax.random.PRNGKey(123))
    change_rate = float(jnp.any(thick["theta"] > 0, -1).mean())
    assert change_rate < 0.02, change_rate
    ev = jnp.any(thick["theta"] > 0, -1)  # the toy has no terminals: events are gate openings only
    tg = td.extract_targets(ev, first, post, z.reshape(B, T, -1), thick["c"], batch["action"][:, 1:], batch["reward"][:, 1:],
                            agent.gamma)  # fmt: skip
    total, terms, stats = jax.jit(agent.hl_loss)(state.params["hl"], tg, z, thick["c"], jax.random.PRNGKey(1))
    assert all(bool(jnp.isfinite(v)) for v in jax.tree.leaves((total, terms, stats)))
    if change_rate == 0:
        assert float(tg["mask"].sum()) == 0 and float(total) == 0


# ---------------------------------------------------------------------------------------------------------------------
# CLI and subprocess smoke runs (save -> evaluate, checkpoint -> resume)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def run_script(script_run, tmp_path):
    """run_script(*flags): `python thick_dreamer_jax.py *flags` in tmp_path as a forked run (conftest.py: script_run; the
    XLA flags and the compilation cache of conftest.py apply)."""
    return lambda *flags: script_run("thick_dreamer_jax.py", flags, tmp_path)


TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "8", "--log-every", "50",
        "--eval-episodes", "1", "--imag-horizon", "3"]  # fmt: skip


def test_train_ratio_scheduler_as_in_the_base():
    """The base's scheduler (tested in test_dreamerv3.py), unchanged: first call 1 update, then ratio per step."""
    first, prev = td.updates_due(1088, None, 0.25)
    dues = []
    for step in range(1089, 1089 + 400):
        due, prev = td.updates_due(step, prev, 0.25)
        dues.append(due)
    assert first == 1 and sum(dues) == 100 and max(dues) == 1
    assert td.check_args(td.Args(env_id="crafter")).learning_starts == 16 * 64 + 64


def test_cli_rejects_bad_thick_flags(run_script):
    r = run_script("--env-id", "CartPole-v1", "--psi", "1.5")
    assert r.returncode == 2 and "--psi" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smoke_cartpole_save_evaluate_checkpoint_resume(tmp_path, run_script):
    r = run_script("--env-id", "CartPole-v1", *TINY, "--total-timesteps", "120", "--checkpoint-every", "100",
                   "--save-model")  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "model saved to" in r.stdout and "eval: 1 episodes" in r.stdout
    assert re.search(r"change rate \d", r.stdout)
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "thick_dreamer_jax.cleanrl_model").is_file() and (run_dir / "checkpoint.ckpt").is_file()
    r = run_script("--env-id", "CartPole-v1", *TINY, "--total-timesteps", "160", "--checkpoint-every", "100",
                   "--resume", str(run_dir / "checkpoint.ckpt"))  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resumed from" in r.stdout and "global_step=120" in r.stdout and "step 160/160" in r.stdout
    r = run_script("--env-id", "CartPole-v1", *TINY, "--total-timesteps", "160", "--context-dim", "4",
                   "--resume", str(run_dir / "checkpoint.ckpt"))  # fmt: skip
    assert r.returncode == 2 and "context_dim" in r.stderr  # another config: a one-line error
    next(run_dir.glob("checkpoint.step*.replay.npz")).write_bytes(b"PK\x03\x04 truncated")  # corrupt: a one-line error
    r = run_script("--env-id", "CartPole-v1", *TINY, "--total-timesteps", "200",
                   "--resume", str(run_dir / "checkpoint.ckpt"))  # fmt: skip
    assert r.returncode == 2 and "corrupt replay" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_resume_continues(tmp_path, run_script, script_popen):
    flags = ["--env-id", "CartPole-v1", *TINY, "--log-every", "16", "--seed", "3"]
    proc = script_popen("thick_dreamer_jax.py", [*flags, "--total-timesteps", "100000"], tmp_path)
    end = time.time() + 300
    while not any(line.startswith("step ") for line in proc.out_lines()):  # stop once past its first progress line
        assert proc.poll() is None and time.time() < end, proc.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)
    _, err = proc.read()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    step, ckpt = re.search(r"stopped by SIGTERM at global_step=(\d+); checkpoint written to (\S+)", err).groups()
    r = run_script(*flags, "--total-timesteps", str(int(step) + 16), "--resume", ckpt)  # past learning starts
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"at global_step={step}" in r.stdout and f"step {int(step) + 16}/" in r.stdout


@pytest.mark.slow
def test_smoke_crafter_save_and_evaluate(run_script):
    r = run_script("--env-id", "crafter", *TINY, "--total-timesteps", "60", "--learning-starts", "20",
                   "--train-ratio", "4", "--save-model")  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "model saved to" in r.stdout and "eval: 1 episodes" in r.stdout
