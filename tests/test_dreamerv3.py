"""Tests of dreamerv3_jax.py: values of the numeric helpers, layer shapes, gradient routing, and smoke runs."""

import math
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dreamerv3_jax as D

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------------
# Numeric helpers (hand-computed values)
# ---------------------------------------------------------------------------------------------------------------------


def test_symlog_symexp():
    assert float(D.symlog(jnp.float32(1.0))) == pytest.approx(0.6931472, abs=1e-6)
    assert float(D.symlog(jnp.float32(-10.0))) == pytest.approx(-2.3978953, abs=1e-6)
    assert abs(float(D.symexp(D.symlog(jnp.float32(123.4)))) - 123.4) < 2e-5 * 123.4
    x = jnp.linspace(-100, 100, 101)
    np.testing.assert_allclose(D.symexp(D.symlog(x)), x, rtol=1e-5, atol=1e-5)


def test_twohot_bins():
    b = np.asarray(D.twohot_bins())
    assert b.shape == (255,) and b[127] == 0.0
    assert b[128] == pytest.approx(math.exp(20 / 127) - 1, rel=1e-6) and b[126] == -b[128]
    assert b[128] == pytest.approx(0.1705577, rel=1e-6)
    assert b[131] == pytest.approx(0.8774629, rel=1e-6) and b[132] == pytest.approx(1.1976788, rel=1e-6)
    assert b[0] == pytest.approx(-(math.exp(20) - 1), rel=1e-6) and b[0] == -b[254]
    np.testing.assert_array_equal(b, -b[::-1])  # antisymmetric
    ref = np.sign(np.linspace(-20, 20, 255)) * np.expm1(np.abs(np.linspace(-20, 20, 255)))
    assert np.max(np.abs(b[b != 0] - ref[b != 0]) / np.abs(ref[b != 0])) < 2e-6


@pytest.mark.parametrize(
    "x,weights",
    [
        (0.0, {127: 1.0}),
        (1.0, {131: 0.617330, 132: 0.382670}),
        (-1.0, {122: 0.382670, 123: 0.617330}),
        (0.5, {129: 0.444608, 130: 0.555392}),
        (10.0, {142: 0.786963, 143: 0.213037}),
        (1e9, {254: 1.0}),
    ],
)
def test_twohot_targets(x, weights):
    t = np.asarray(D.twohot_encode(jnp.float32(x), D.twohot_bins()))
    expected = np.zeros(255)
    for i, w in weights.items():
        expected[i] = w
    np.testing.assert_allclose(t, expected, atol=2e-6)
    assert t.sum() == pytest.approx(1.0, abs=1e-6)


def test_twohot_zero_logits():
    b = D.twohot_bins()
    logits = jnp.zeros((3, 255))
    np.testing.assert_array_equal(np.asarray(D.twohot_mean(logits, b)), 0.0)  # exactly 0
    np.testing.assert_allclose(D.twohot_loss(logits, jnp.array([0.0, 3.0, -1e4]), b), math.log(255), atol=1e-5)
    assert math.log(255) == pytest.approx(5.5412635, abs=1e-6)


def test_twohot_mean_recovers_encoded_value():
    b = D.twohot_bins()
    for x in [0.3, -2.5, 17.0, 1234.5]:
        logits = jnp.log(D.twohot_encode(jnp.float32(x), b) + 1e-30)
        assert float(D.twohot_mean(logits, b)) == pytest.approx(x, rel=1e-4)


def test_latent_unimix():
    p = np.exp(np.asarray(D.unimix_logits(jnp.array([0.0, 0.0, 10.0, 0.0]), 0.01)))
    np.testing.assert_allclose(p, [0.002545, 0.002545, 0.992365, 0.002545], atol=2e-6)
    assert float(D.categorical_entropy(jnp.zeros(16))) == pytest.approx(math.log(16), abs=1e-5)
    assert float(D.categorical_entropy(jnp.zeros(17))) == pytest.approx(2.8332, abs=1e-4)


def test_lambda_return_imagination_example():
    rew = jnp.array([[0.0, 1.0, 0.0, 2.0]])
    val = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    ret = D.lambda_return(rew, 0.9 * jnp.ones_like(rew), 0.95 * jnp.ones_like(rew), val)
    np.testing.assert_allclose(ret[0], [5.299165, 4.923, 5.6], rtol=1e-6)


@pytest.mark.parametrize(
    "last,term,expected",
    [
        ([0, 0, 1, 0], [0, 0, 1, 0], [1.9969972, 0.0, 41.879883]),
        ([0, 0, 1, 0], [0, 0, 0, 0], [30.326084, 29.90991, 41.879883]),
    ],
)
def test_lambda_return_replay_example(last, term, expected):
    gamma = 1 - 1 / 333
    rew = jnp.array([[0.0, 1.0, 0.0, 2.0]])
    boot = jnp.array([[10.0, 20.0, 30.0, 40.0]])
    last, term = jnp.array([last], jnp.float32), jnp.array([term], jnp.float32)
    ret = D.lambda_return(rew, gamma * (1 - term), 0.95 * (1 - last), boot)
    np.testing.assert_allclose(ret[0], expected, rtol=1e-6)


def test_lambda_return_scan_equals_loop():
    rng = np.random.default_rng(0)
    rew, live, cont, boot = (rng.uniform(0, 1, (5, 9)).astype(np.float32) for _ in range(4))
    ret = np.asarray(D.lambda_return(*(jnp.asarray(x) for x in (rew, live, cont, boot))))
    loop = np.zeros((5, 8))
    nxt = boot[:, -1]
    for k in reversed(range(8)):
        nxt = rew[:, k + 1] + live[:, k + 1] * ((1 - cont[:, k + 1]) * boot[:, k + 1] + cont[:, k + 1] * nxt)
        loop[:, k] = nxt
    np.testing.assert_allclose(ret, loop, rtol=1e-5)


def test_percentile_ema_from_zero():
    ret = jnp.linspace(0, 10, 101)
    state, scale = D.percentile_update(jnp.zeros(2), ret)
    np.testing.assert_allclose(state, [0.01 * 0.5, 0.01 * 9.5], rtol=1e-5)
    assert float(scale) == 1.0  # max(1, hi - lo) is 1 on the first updates
    big = jnp.linspace(0, 1000, 101)  # P5 = 50, P95 = 950
    for _ in range(500):
        state, scale = D.percentile_update(state, big)
    decay = 0.99**500  # x_n = (1 - decay) * target + decay * x_0
    lo, hi = (1 - decay) * 50 + decay * 0.005, (1 - decay) * 950 + decay * 0.095
    np.testing.assert_allclose(state, [lo, hi], rtol=1e-4)
    assert float(scale) == pytest.approx(hi - lo, rel=1e-4)


def test_agc_bound():
    g = jnp.array([3.0, 4.0])
    clipped = D.agc_clip(g, jnp.zeros(2), 0.3)  # ||p|| = 0 -> limit 0.3 * 1e-3
    assert float(jnp.linalg.norm(clipped)) == pytest.approx(3e-4, rel=1e-5)
    np.testing.assert_allclose(D.agc_clip(g, jnp.array([100.0, 0.0]), 0.3), g)  # under the limit: unchanged


def test_laprop_matches_hand_computed_steps():
    lr, eps, warmup = 1e-3, 1e-20, 2
    opt = D.laprop(lr, eps, 0.3, warmup)
    p = {"w": jnp.array([1.0, 2.0])}
    state = opt.init(p)
    grads = [np.array([0.1, -0.2]), np.array([0.3, 0.1])]
    nu, mu, theta = np.zeros(2), np.zeros(2), np.array([1.0, 2.0])
    for n, g in enumerate(grads, start=1):
        upd, state = opt.update({"w": jnp.asarray(g)}, state, p)
        p = {"w": p["w"] + upd["w"]}
        # reference in numpy: AGC does not trigger here (||g|| << 0.3 ||theta||)
        nu = 0.999 * nu + 0.001 * g**2
        u = g / (np.sqrt(nu / (1 - 0.999**n)) + eps)
        mu = 0.9 * mu + 0.1 * u
        theta = theta - lr * min(n - 1, warmup) / warmup * mu / (1 - 0.9**n)
        np.testing.assert_allclose(p["w"], theta, rtol=1e-6)
    assert not np.allclose(theta, [1.0, 2.0])  # the second step moved the parameters


def test_laprop_group_lr_scales_only_that_group():
    """--actor-lr / --critic-lr: the named group's step is the shared-lr step times lr_group / lr; others unchanged."""
    p = {"actor": {"w": jnp.array([1.0, 2.0])}, "enc": {"w": jnp.array([3.0, -1.0])}}
    g = {"actor": {"w": jnp.array([0.1, -0.2])}, "enc": {"w": jnp.array([0.3, 0.1])}}
    shared, grouped = D.laprop(1e-3, 1e-20, 0.3, 0), D.laprop(1e-3, 1e-20, 0.3, 0, group_lr={"actor": 2.5e-4})
    u1, _ = shared.update(g, shared.init(p), p)
    u2, _ = grouped.update(g, grouped.init(p), p)
    np.testing.assert_allclose(u2["actor"]["w"], 0.25 * u1["actor"]["w"], rtol=1e-6)
    np.testing.assert_allclose(u2["enc"]["w"], u1["enc"]["w"], rtol=0)
    np.testing.assert_allclose(u1["enc"]["w"], -1e-3 * np.sign([0.3, 0.1]), rtol=1e-5)  # first step: lr * g / |g|
    args = D.Args(actor_lr=3e-5, critic_lr=2e-5)
    assert D.Agent(args, gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)).opt is not None  # builds with groups


def test_learning_rate_warmup():
    args = D.Args()
    assert D.learning_rate_at(args, 0) == 0.0
    assert D.learning_rate_at(args, 500) == pytest.approx(2e-5)
    assert D.learning_rate_at(args, 1000) == D.learning_rate_at(args, 10**6) == pytest.approx(4e-5)


def test_train_ratio_scheduler():
    """The first call trains once; then the updates per policy step average to train_ratio / (B * T), with the
    fractional part carried over (here ratio 512 / (16 * 64) = 0.5 and 32 / (16 * 32) = 1 / 16, one env)."""
    assert D.updates_due(1088, None, 0.5) == (1, 1088.0)
    for ratio in (0.5, 1 / 16, 3.0, 0.3):
        first, prev = D.updates_due(100, None, ratio)
        dues = []
        for step in range(101, 100_001):
            due, prev = D.updates_due(step, prev, ratio)
            dues.append(due)
        assert first == 1 and sum(dues) == pytest.approx(ratio * 99_900, abs=1.0)  # ratio per step, within one update
        assert max(dues) <= math.ceil(ratio) and min(dues) >= math.floor(ratio)  # spread evenly, no bursts
    assert D.check_args(D.Args(env_id="crafter")).learning_starts == 16 * 64 + 64  # 1024 window starts of 65 steps
    assert D.check_args(D.Args(env_id="CartPole-v1", num_envs=4)).learning_starts == (16 + 4) * 64  # 4 x (320 - 64)


def test_per_env_defaults():
    ratio_steps = lambda env, **kw: (lambda a: (a.train_ratio, a.total_timesteps))(D.check_args(D.Args(env_id=env, **kw)))
    assert ratio_steps("crafter") == (512.0, 1_100_000)
    assert ratio_steps("atari100k_pong") == (256.0, 110_000)  # the official atari100k config: run.steps 1.1e5
    assert ratio_steps("CartPole-v1") == (512.0, 1_100_000)
    assert ratio_steps("atari100k_pong", train_ratio=64.0, total_timesteps=5000) == (64.0, 5000)  # given flags win


def test_continue_target_and_gamma():
    assert 1 - 1 / 333 == pytest.approx(0.996997, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Layer shapes and gradient routing
# ---------------------------------------------------------------------------------------------------------------------

CRAFTER_OBS = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)


def _agent(size, obs_space=CRAFTER_OBS, act_space=gym.spaces.Discrete(17), **kw):
    args = D.check_args(D.Args(model_size=size, env_id="crafter", total_timesteps=10_000, **kw))
    return D.Agent(args, obs_space, act_space)


def test_parameter_count_of_12m_matches_official():
    agent = _agent("12m")
    shapes = jax.eval_shape(agent._init, jax.random.PRNGKey(0)).params
    counts = {k: D.count_params(v) for k, v in shapes.items()}
    assert counts == {"enc": 220_416, "rssm": 5_982_464, "dec": 1_272_003, "rew": 721_407, "con": 656_129,
                      "actor": 792_337, "critic": 853_503}  # fmt: skip
    assert sum(counts.values()) == 10_498_259


def test_init_scales():
    agent = _agent("debug")
    p = agent.init(jax.random.PRNGKey(0)).params
    w = np.asarray(p["rssm"]["embed_h"]["Linear_0"]["kernel"])  # Linear (64 -> 32), fan_in 64
    assert w.std() == pytest.approx(1 / 8, rel=0.15) and np.abs(w).max() <= 2 * 1.1368 / 8 + 1e-6
    assert np.all(np.asarray(p["rew"]["Linear_0"]["kernel"]) == 0) and np.all(
        np.asarray(p["critic"]["Linear_0"]["kernel"]) == 0
    )


def _random_batch(agent, bsz=2, tlen=4, seed=0):
    rng = np.random.default_rng(seed)
    t1 = tlen + 1
    return {
        "obs": np.broadcast_to(rng.integers(0, 255, (bsz, t1, 1, 1, 1), dtype=np.uint8), (bsz, t1, *agent.obs_space.shape)),
        "action": np.eye(agent.act_dim, dtype=np.float32)[rng.integers(0, agent.act_dim, (bsz, t1))],
        "reward": rng.normal(size=(bsz, t1)).astype(np.float32),
        "is_first": np.zeros((bsz, t1), bool),
        "is_last": np.zeros((bsz, t1), bool),
        "is_terminal": np.zeros((bsz, t1), bool),
        "deter": rng.normal(size=(bsz, t1, agent.deter)).astype(np.float16),
        "stoch": rng.integers(0, agent.classes, (bsz, t1, agent.stoch), dtype=np.uint8),
    }


def test_gradient_routing():
    agent = _agent("debug", imag_horizon=3, batch_size=2, batch_length=4)
    state = agent.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    # perturb the zero-initialised output layers so gradients can flow through them
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(key, x.shape), state.params)
    batch = _random_batch(agent)

    terms = ("actor", "critic", "repval", "wm_recon")

    @jax.jit
    def all_grads(p):  # one compile for the four gradients
        return [
            jax.grad(lambda q, t=t: agent.loss(q, state.slow_critic, state.retnorm, batch, key)[1][0][t])(p) for t in terms
        ]

    norms = [{k: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(v))) for k, v in g.items()} for g in all_grads(params)]
    actor, critic, repval, recon = norms
    assert actor["actor"] > 0 and all(actor[k] == 0 for k in ("enc", "rssm", "dec", "rew", "con", "critic"))
    assert critic["critic"] > 0 and all(critic[k] == 0 for k in ("enc", "rssm", "dec", "rew", "con", "actor"))
    assert repval["critic"] > 0 and repval["enc"] > 0 and repval["rssm"] > 0  # the replay critic loss trains the WM
    assert all(repval[k] == 0 for k in ("dec", "rew", "con", "actor"))
    assert recon["enc"] > 0 and recon["dec"] > 0 and all(recon[k] == 0 for k in ("actor", "critic", "rew", "con"))


def test_reward_scale_multiplies_only_the_reward_term():
    terms = {}
    for scale in (1.0, 3.0):
        agent = _agent("debug", imag_horizon=3, batch_size=2, batch_length=4, reward_scale=scale)
        state = agent.init(jax.random.PRNGKey(0))
        params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape), state.params)
        batch, key = _random_batch(agent), jax.random.PRNGKey(1)
        loss = jax.jit(lambda p, a=agent, s=state, b=batch, k=key: a.loss(p, s.slow_critic, s.retnorm, b, k))
        terms[scale] = {k: float(v) for k, v in loss(params)[1][0].items()}
    assert terms[3.0]["wm_reward"] == pytest.approx(3 * terms[1.0]["wm_reward"], rel=1e-5) and terms[1.0]["wm_reward"] > 0
    assert all(terms[3.0][k] == pytest.approx(v, rel=1e-5) for k, v in terms[1.0].items() if k != "wm_reward")


def test_train_step_reduces_loss_and_keeps_shapes():
    agent = _agent("debug", imag_horizon=3, batch_size=2, batch_length=4, learning_rate=1e-3, warmup=1)
    state = agent.init(jax.random.PRNGKey(0))
    batch = _random_batch(agent)
    losses = []
    for i in range(30):
        state, metrics, (deter, stoch) = agent.train_step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(metrics["losses/wm_recon"]))
        assert bool(metrics["finite"])
    assert deter.shape == (2, 4, agent.deter) and stoch.shape == (2, 4, agent.stoch) and int(state.updates) == 30
    assert losses[-1] < 0.8 * losses[0]  # constant images: the decoder quickly learns them
    # a non-finite loss: the update is skipped (state kept) and the offending term is named for the host's error message
    bad = dict(batch, reward=np.full_like(batch["reward"], np.nan))
    before = [np.asarray(x) for x in jax.tree.leaves(state.params)]  # copies: the state's buffers are donated
    state, metrics, _ = agent.train_step(state, bad, jax.random.PRNGKey(99))
    assert not bool(metrics["finite"]) and not bool(metrics["finite/wm_reward"]) and bool(metrics["finite/wm_recon"])
    after = jax.tree.leaves(state.params)
    assert int(state.updates) == 30 and all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_replay_windows_queue_and_latent_writeback():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    rp = D.Replay(capacity=20, num_envs=2, length=5, obs_space=space, act_dim=2, deter=4, stoch=3, seed=0)
    for t in range(23):
        rp.add({"obs": np.full((2, 3), t, np.float32), "action": np.zeros((2, 2)), "reward": np.full(2, t),
                "is_first": np.zeros(2, bool), "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool),
                "deter": np.zeros((2, 4)), "stoch": np.zeros((2, 3))})  # fmt: skip
    assert len(rp) == 40 and rp.ready()
    fresh = len(rp.queue)
    data, env, index = rp.sample(fresh + 8)
    r = data["reward"]
    assert np.all(np.diff(r, axis=1) == 1)  # windows are consecutive steps of one env
    assert r.min() >= 3 and r.max() <= 22  # the oldest 3 steps were overwritten (capacity 20)
    rp.write_latents(env, index[:, 1:], np.ones((len(env), 4, 4)), np.full((len(env), 4, 3), 2))
    assert np.all(rp.data["deter"][env[0], index[0, 1:]] == 1) and np.all(rp.data["stoch"][env[0], index[0, 1:]] == 2)


def test_replay_marks_the_step_before_an_episode_start_last():
    """A stream cut without an is_last (the last step stored before a --resume) must not carry a return across it."""
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    rp = D.Replay(capacity=50, num_envs=1, length=8, obs_space=space, act_dim=2, deter=4, stoch=3, seed=0)
    for t in range(8):
        rp.add({"obs": np.full((1, 3), t, np.float32), "action": np.zeros((1, 2)), "reward": np.full(1, t),
                "is_first": np.array([t in (0, 5)]), "is_last": np.array([t == 7]), "is_terminal": np.zeros(1, bool),
                "deter": np.zeros((1, 4)), "stoch": np.zeros((1, 3))})  # fmt: skip
    data, _, _ = rp.sample(1)
    np.testing.assert_array_equal(data["is_last"][0], [0, 0, 0, 0, 1, 0, 0, 1])  # step 4 (before the restart) and 7
    assert not rp.data["is_last"][0, 4]  # the stored stream itself is unchanged


def test_replay_checkpoint_holds_only_written_steps_and_round_trips(tmp_path):
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    make = lambda cap: D.Replay(capacity=cap, num_envs=2, length=5, obs_space=space, act_dim=2, deter=4, stoch=3, seed=0)

    def fill(rp, n):
        for t in range(n):
            rp.add({"obs": np.full((2, 3), t, np.float32), "action": np.zeros((2, 2)), "reward": np.full(2, t),
                    "is_first": np.zeros(2, bool), "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool),
                    "deter": np.zeros((2, 4)), "stoch": np.zeros((2, 3))})  # fmt: skip

    def through_npz(state):  # the file format of Checkpoints.save / --resume
        np.savez(tmp_path / "r.npz", **{k: v for k, v in state.items() if k != "data"},
                 **{f"data_{k}": v for k, v in state["data"].items()})  # fmt: skip
        with np.load(tmp_path / "r.npz") as f:
            return {"data": {k[5:]: f[k] for k in f.files if k.startswith("data_")},
                    **{k: f[k] for k in f.files if not k.startswith("data_")}}  # fmt: skip

    rp = make(100)
    fill(rp, 7)
    rp.sample(4)  # 2 queued fresh windows, then 2 draws from the RNG: its state is no longer the seed's
    state = rp.state_dict()
    assert state["data"]["obs"].shape == (2, 7, 3)  # 7 of 100 slots written: only those are saved
    back = make(100)
    back.load_state_dict(through_npz(state))
    assert np.array_equal(back.data["reward"], rp.data["reward"]) and list(back.queue) == list(rp.queue)
    assert np.array_equal(back.count, rp.count) and np.array_equal(back.pos, rp.pos)
    assert all(np.array_equal(a, b) for a, b in zip(rp.sample(3)[1:], back.sample(3)[1:], strict=True))  # RNG restored
    fill(rp, 100)  # wrapped: the whole buffer is saved; into a smaller replay, the newest steps in order
    small = make(30)
    small.load_state_dict(through_npz(rp.state_dict()))
    assert np.array_equal(small.data["reward"][0], np.arange(70, 100)) and len(small) == 60


# ---------------------------------------------------------------------------------------------------------------------
# Subprocess smoke runs (debug preset, tiny budgets) and error handling
# ---------------------------------------------------------------------------------------------------------------------

TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "16", "--imag-horizon", "3"]


@pytest.fixture
def run(script_run, tmp_path):
    """run(*flags, check=True): `python dreamerv3_jax.py *flags` in tmp_path as a forked run (conftest.py: script_run;
    the XLA flags and the compilation cache of conftest.py apply)."""

    def go(*flags, check=True):
        out = script_run("dreamerv3_jax.py", flags, tmp_path)
        if check:
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    return go


@pytest.mark.slow
def test_smoke_cartpole_save_and_evaluate(tmp_path, run):
    out = run("--env-id", "CartPole-v1", *TINY, "--total-timesteps", "60", "--save-model", "--eval-episodes", "2")
    assert "model saved to" in out.stdout and "eval: 2 episodes" in out.stdout
    model = next(tmp_path.glob("runs/*/dreamerv3_jax.cleanrl_model"))
    events = list(model.parent.glob("events.out.tfevents*"))
    assert events
    out = run("--evaluate", str(model), "--eval-episodes", "1")  # the env id comes from the file
    assert re.search(r"^eval: 1 episodes, return [-\d.]+ \+- [\d.]+$", out.stdout, re.M)
    out = run("--evaluate", str(model), "--env-id", "Acrobot-v1", check=False)  # another env: one-line error
    assert out.returncode == 2 and "trained on --env-id CartPole-v1" in out.stderr


@pytest.mark.slow
def test_smoke_pendulum_continuous(tmp_path, run):
    out = run("--env-id", "Pendulum-v1", *TINY, "--total-timesteps", "60", "--save-model", "--eval-episodes", "1")
    assert "eval: 1 episodes" in out.stdout


@pytest.mark.slow
def test_smoke_atari100k_video_checkpoint_and_resume(tmp_path, run):
    """The image smoke run (Atari100k protocol, open-loop videos at every update): checkpoint -> resume, and the one-line
    errors of a resume that cannot continue. (Crafter's main loop is the THICK smoke run's: the same shared code.)"""
    out = run("--env-id", "atari100k_pong", *TINY, "--video-every", "1", "--total-timesteps", "40", "--checkpoint-every", "20")
    assert "step 40/40" in out.stdout
    ckpt = next(tmp_path.glob("runs/*/checkpoint.ckpt"))
    replay = ckpt.parent / "checkpoint.step40.replay.npz"  # the replay named by the checkpoint; step 20's is deleted
    assert replay.exists() and [p.name for p in ckpt.parent.glob("*.npz")] == [replay.name]
    out = run("--env-id", "atari100k_pong", *TINY, "--total-timesteps", "60", "--resume", str(ckpt))
    assert "resumed from" in out.stdout and "global_step=40" in out.stdout and "step 60/60" in out.stdout
    assert len(list(tmp_path.glob("runs/*"))) == 1  # the resumed run logs into the same run directory
    # a checkpoint of another config is a one-line error with exit status 2
    bad = run("--env-id", "atari100k_pong", *TINY, "--model-size", "1m", "--resume", str(ckpt), check=False)
    assert bad.returncode == 2 and "model_size" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = run("--env-id", "atari100k_pong", *TINY, "--total-timesteps", "40", "--resume", str(ckpt), check=False)
    assert bad.returncode == 2 and "larger --total-timesteps" in bad.stderr  # nothing left to train
    # so is a corrupt replay file, and a missing one unless --no-checkpoint-replay accepts an empty replay
    replay.write_bytes(replay.read_bytes()[:1000])
    bad = run("--env-id", "atari100k_pong", *TINY, "--total-timesteps", "60", "--resume", str(ckpt), check=False)
    assert bad.returncode == 2 and "corrupt replay" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    replay.unlink()
    bad = run("--env-id", "atari100k_pong", *TINY, "--total-timesteps", "60", "--resume", str(ckpt), check=False)
    assert bad.returncode == 2 and "--no-checkpoint-replay" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def stop_with_sigterm(proc, timeout=300):
    """SIGTERM to a started run once it prints its first progress line; returns (exit status, stdout, stderr)."""
    end = time.time() + timeout
    while not any(line.startswith("step ") for line in proc.out_lines()):
        assert proc.poll() is None and time.time() < end, proc.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout)
    return proc.returncode, *proc.read()


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_resume_continues(tmp_path, run, script_popen):
    flags = ["--env-id", "CartPole-v1", *TINY, "--log-every", "16", "--seed", "3"]
    rc, out, err = stop_with_sigterm(script_popen("dreamerv3_jax.py", [*flags, "--total-timesteps", "100000"], tmp_path))
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    step, ckpt = re.search(r"stopped by SIGTERM at global_step=(\d+); checkpoint written to (\S+)", err).groups()
    assert int(step) >= 16 and (tmp_path / ckpt).with_name(f"checkpoint.step{step}.replay.npz").exists()  # with its replay
    out = run(*flags, "--total-timesteps", str(int(step) + 16), "--resume", ckpt)  # past learning starts (24)
    assert f"at global_step={step}" in out.stdout and f"step {int(step) + 16}/" in out.stdout


def test_evaluate_crafter_reports_score(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = _agent("debug")
    state = agent.init(jax.random.PRNGKey(0))
    path = str(tmp_path / "m.cleanrl_model")
    import flax

    D.save_file(path, agent.args, {"params": flax.serialization.to_state_dict(state.params)})
    short = lambda env_id, seed, idx, cv, rn: D.common.make_env(env_id, seed, idx, cv, rn, length=30)
    returns = D.evaluate(path, short, "crafter", 2, "eval")
    assert len(returns) == 2 and "crafter score" in capsys.readouterr().out


# covers both branches of each: s2d + im2col (cin <= 48) or XLA conv + pool; im2col or XLA conv (4 cout < cin)
@pytest.mark.parametrize("cin,cout,size", [(3, 8, 16), (8, 12, 8), (40, 8, 8), (56, 3, 8)])
def test_fast_convolutions_equal_plain_forms(cin, cout, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(5, 5, cin, cout)) / 10, jnp.float32)
    b = jnp.asarray(rng.normal(size=(cout,)), jnp.float32)
    plain = lambda x: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    np.testing.assert_allclose(D.conv5x5_maxpool(x, k, b), D.maxpool2(plain(x)), atol=2e-4)
    np.testing.assert_allclose(D.upsample_conv5x5(x, k, b), plain(D.upsample2(x)), atol=2e-4)
    np.testing.assert_allclose(D.conv_im2col(x, k) + b, plain(x), atol=2e-4)
    gk_fast = jax.grad(lambda k_: jnp.sum(D.upsample_conv5x5(x, k_, b) ** 2))(k)
    gk_plain = jax.grad(lambda k_: jnp.sum((jax.lax.conv_general_dilated(D.upsample2(x), k_, (1, 1), "SAME",
                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b) ** 2))(k)  # fmt: skip
    np.testing.assert_allclose(gk_fast, gk_plain, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kh,kw,cin,cout", [(3, 3, 5, 7), (5, 5, 4, 3), (1, 3, 2, 2)])
def test_conv_im2col_custom_gradients_equal_plain_conv(kh, kw, cin, cout):
    """The tap-by-tap VJP of conv_im2col (it keeps no columns) gives the gradients of XLA's conv, jitted."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 10, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(2, 6, 10, cout)), jnp.float32)
    plain = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                      precision="highest")  # fmt: skip
    fast = jax.jit(jax.grad(lambda x, k: jnp.sum(D.conv_im2col(x, k) * c), (0, 1)))(x, k)
    ref = jax.grad(lambda x, k: jnp.sum(plain(x, k) * c), (0, 1))(x, k)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_phase_max_custom_gradient_equals_autodiff_with_ties():
    """The pool's max over 4 phases (its backward keeps no mask) routes the gradient as autodiff of max does: all to the
    maximum, split equally between tied maxima; jitted."""
    rng = np.random.default_rng(3)
    y = jnp.asarray(rng.normal(size=(2, 3, 3, 4, 5)), jnp.float32)
    y = y.at[0, 0, 0, 1, :].set(y[0, 0, 0].max(0)).at[1, 2, 2, :, 0].set(0.5)  # a two-way tie and a four-way tie
    c = jnp.asarray(rng.normal(size=(2, 3, 3, 5)), jnp.float32)
    np.testing.assert_array_equal(D.phase_max(y), y.max(-2))
    fast = jax.jit(jax.grad(lambda y: jnp.sum(D.phase_max(y) * c)))(y)
    np.testing.assert_allclose(fast, jax.grad(lambda y: jnp.sum(y.max(-2) * c))(y), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast[1, 2, 2, :, 0], np.full(4, float(c[1, 2, 2, 0]) / 4), rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 7), (2, 4, 4, 16)])
def test_rmsnorm_silu_custom_gradients_equal_autodiff(shape):
    """The fused RMSNorm -> SiLU (its backward keeps only the input) gives the values and the gradients (input and
    scale) of the plain composition under autodiff, jitted; a hand value too."""
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.normal(size=shape) * 3.0, jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, size=shape[-1]), jnp.float32)
    c = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def plain(y, scale):
        n = y * jax.lax.rsqrt(jnp.mean(y * y, -1, keepdims=True) + 1e-4) * scale
        return n * jax.nn.sigmoid(n)

    np.testing.assert_allclose(D.rmsnorm_silu(y, scale, 1e-4), plain(y, scale), rtol=1e-6, atol=1e-6)
    fast = jax.jit(jax.grad(lambda y, s: jnp.sum(D.rmsnorm_silu(y, s, 1e-4) * c), (0, 1)))(y, scale)
    ref = jax.grad(lambda y, s: jnp.sum(plain(y, s) * c), (0, 1))(y, scale)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    # y = (3, 4): rms = sqrt(12.5), n = (0.8485, 1.1314), silu(n) = n sigmoid(n)
    out = D.rmsnorm_silu(jnp.array([3.0, 4.0]), jnp.ones(2), 0.0)
    np.testing.assert_allclose(out, [0.8485281 / (1 + math.exp(-0.8485281)), 1.1313708 / (1 + math.exp(-1.1313708))],
                               rtol=1e-6)  # fmt: skip
    assert D.rmsnorm_silu(y.astype(jnp.bfloat16), scale, 1e-4).dtype == jnp.bfloat16
    bf = jax.grad(lambda y: jnp.sum(D.rmsnorm_silu(y, scale, 1e-4).astype(jnp.float32)))(y.astype(jnp.bfloat16))
    assert bf.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(bf.astype(jnp.float32))))
    # _after (the tie of every hand-written backward to its incoming gradient) is the identity on values
    np.testing.assert_array_equal(D._after(y, jnp.full((2, 3), 7.0)), y)


def test_to_env_action_discrete_start_and_box_rescale():
    agent = SimpleNamespace(discrete=True, act_space=gym.spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(D.to_env_action(agent, np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])), [1, -1])
    agent = SimpleNamespace(discrete=False, act_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32))
    np.testing.assert_allclose(D.to_env_action(agent, np.array([[0.5], [-3.0]])), [[1.0], [-2.0]])


# ---------------------------------------------------------------------------------------------------------------------
# First contact: progress lines, ETA, the compile notes
# ---------------------------------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, name, value, step):
        self.scalars.append((name, step))


def test_duration_format():
    assert [D.duration(s) for s in (59, 61, 3599, 3600 * 5 + 60 * 7, 86400 * 3 + 3600 * 4 + 59)] == [
        "0h00m", "0h01m", "0h59m", "5h07m", "3d04h"]  # fmt: skip


def test_progress_keeps_the_step_grid_after_resume_and_prints_every_30_s(monkeypatch, capsys):
    """Scalars and lines at every multiple of --log-every (a resumed run at step 1234 logs at 2000, 3000, not 2234),
    plus a line whenever 30 s pass; the ETA uses the rate since the first update ended (compilation excluded)."""
    clock = [1000.0]
    monkeypatch.setattr(D.time, "time", lambda: clock[0])
    args = D.check_args(D.Args(env_id="CartPole-v1", model_size="debug", log_every=1000, total_timesteps=10_000))
    progress, writer, replay = D.Progress(args, 1234, 50), _Writer(), [0] * 7
    grid = [step for step in range(1235, 3501) if progress.log(writer, replay, {}, step, 50)]
    assert grid == [2000, 3000] and {s for _, s in writer.scalars} == {2000, 3000}
    assert "step 2000/10000 | SPS" in capsys.readouterr().out
    clock[0] += 31  # 30 s without a grid step: a line, no scalars
    assert not progress.log(writer, replay, {}, 3501, 50) and "step 3501/10000" in capsys.readouterr().out
    progress.before_update()  # the first update of this process: the compile note, then 20 s of compiling
    clock[0] += 20
    progress.after_updates(4000, 51)
    out = capsys.readouterr().out
    assert "compiling the train step, a one-off of about" in out and "the first update took 20 s" in out
    clock[0] += 100  # 1000 steps in 100 s: the 5000 steps left take 500 s
    progress.after_updates(5000, 56)
    assert "this run reaches step 10,000 in about 0h08m" in capsys.readouterr().out
    progress.log(writer, replay, {"losses/total": 1.5}, 5000, 56)
    assert "| ETA 0h08m | loss 1.500" in capsys.readouterr().out


def test_progress_on_a_cpu_names_the_quick_start_when_the_run_takes_hours(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(D.time, "time", lambda: clock[0])
    args = D.check_args(D.Args(env_id="crafter", model_size="12m"))  # the full-size defaults: 1.1M steps
    progress = D.Progress(args, 0, 0)
    progress.before_update()
    progress.after_updates(1088, 1)
    for i in range(1, 6):  # five updates of 10 s, one every two steps
        clock[0] += 10
        progress.after_updates(1088 + 2 * i, 1 + i)
    out = capsys.readouterr().out
    assert "in about 63d" in out and D.QUICK_START in out and "--model-size debug" in D.QUICK_START
