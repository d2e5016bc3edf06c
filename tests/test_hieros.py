"""Tests of hieros_s5_torch.py: properties of the S5 layer, the world model, the hierarchy and ETBS (values, not only
shapes), plus smoke runs. Numerical parity with the original code is in tests/test_parity_hieros.py.

Run: .venv/bin/python -m pytest tests/test_hieros.py -q
"""

import importlib
import math
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import common

h = importlib.import_module("hieros_s5_torch")
torch.set_num_threads(1)  # tiny tensors: thread overhead dominates, and CI machines are small
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "hieros_s5_torch.py")


def crand(*shape, scale=1.0):
    return torch.complex(torch.randn(*shape), torch.randn(*shape)) * scale


def loop_scan(a, b, d):
    """Reference: x_t = (1 - d_t) a_t x_{t-1} + b_t, x_0 = 0, as a Python loop."""
    x, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        x = (1 - d[:, t]) * a[:, t] * x + b[:, t]
        out.append(x)
    return torch.stack(out, 1)


def random_ssm(h_dim=5, p=8, j=2):
    torch.manual_seed(0)
    ssm = h.S5SSM(h_dim, p, j)
    with torch.no_grad():  # random complex parameters (stable: Re(Lambda) < 0)
        ssm.lambda_re.copy_(-torch.rand(p) - 0.05)
        ssm.lambda_im.copy_(torch.randn(p) * 3)
        ssm.log_step.copy_(torch.empty(p).uniform_(-3, 0))
    return ssm


# ----------------------------------------------------------------------------------------------------------------------
# S5 / scan
# ----------------------------------------------------------------------------------------------------------------------


def test_ssm_parallel_equals_recurrent():
    ssm = random_ssm()
    u = torch.randn(3, 13, 5)
    reset = torch.zeros(3, 13, dtype=torch.bool)
    y, x = ssm(u, reset)
    state, ys, xs = torch.zeros(3, 8, dtype=torch.complex64), [], []
    for t in range(13):
        yt, state = ssm.step(u[:, t], state)
        ys.append(yt), xs.append(state)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, torch.stack(xs, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["block", "stack"])
def test_block_and_stack_parallel_equals_recurrent(which):
    torch.manual_seed(1)
    mod = h.DoubleS5Block(6, 8, 2, dropout=0.1) if which == "block" else h.S5Stack(6, 8, 2, num_blocks=3, dropout=0.1)
    mod.eval()  # dropout off
    u = torch.randn(2, 11, 6)
    reset = torch.zeros(2, 11, dtype=torch.bool)
    reset[:, 0] = True
    reset[1, 5] = True
    reset[0, 6:8] = True
    y, s = mod(u, reset)
    shape = (2, 16) if which == "block" else (2, 3, 16)
    state, ys, ss = torch.zeros(shape, dtype=torch.complex64), [], []
    for t in range(11):
        state = torch.where(reset[:, t].reshape(-1, *[1] * (state.dim() - 1)), torch.zeros_like(state), state)
        yt, state = mod.step(u[:, t], state)
        ys.append(yt), ss.append(state)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s, torch.stack(ss, 1), atol=1e-5, rtol=1e-4)


def test_reset_operator_is_associative():
    torch.manual_seed(2)
    for d1 in (0.0, 1.0):
        for d2 in (0.0, 1.0):
            for d3 in (0.0, 1.0):
                e = [(crand(4), crand(4), torch.full((4,), d)) for d in (d1, d2, d3)]
                left = h.reset_combine(*h.reset_combine(*e[0], *e[1]), *e[2])
                right = h.reset_combine(*e[0], *h.reset_combine(*e[1], *e[2]))
                for a, b in zip(left, right, strict=True):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reset_is_fresh_start():
    torch.manual_seed(3)
    lam = crand(6, scale=0.5)
    a_seq, b_seq = lam.expand(1, 20, 6), crand(1, 20, 6)
    d = torch.zeros(1, 20, 1)
    d[0, 12] = 1.0  # B starts at t = 12
    x = h.resettable_scan(a_seq, b_seq, d)
    x_b = h.resettable_scan(a_seq[:, 12:], b_seq[:, 12:], torch.zeros(1, 8, 1))
    torch.testing.assert_close(x[:, 12:], x_b, atol=1e-5, rtol=1e-5)
    b2 = b_seq.clone()
    b2[:, :12] = crand(1, 12, 6) * 10  # replace A by random data: B's outputs do not change
    torch.testing.assert_close(h.resettable_scan(a_seq, b2, d)[:, 12:], x[:, 12:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t_len", [1, 2, 7, 37, 64])
def test_scan_equals_loop_with_random_resets(t_len):
    torch.manual_seed(t_len)
    a = crand(3, t_len, 5, scale=0.6)  # time-varying a is also handled
    b = crand(3, t_len, 5)
    d = (torch.rand(3, t_len, 1) < 0.15).float()
    d[0, 0] = 1.0  # reset at t = 0
    if t_len > 4:
        d[1, 2:5] = 1.0  # consecutive resets
    torch.testing.assert_close(h.resettable_scan(a, b, d), loop_scan(a, b, d), atol=1e-5, rtol=1e-5)


def test_zoh_discretisation_and_limit():
    lam = torch.tensor([-0.5 + 3j, -1.0 - 2j, -0.2 + 0j], dtype=torch.complex128)
    b = torch.randn(3, 4, dtype=torch.complex128)
    delta = torch.tensor([0.1, 0.01, 1.0], dtype=torch.float64)
    lam_bar, b_bar = h.discretize_zoh(lam, b, delta)
    torch.testing.assert_close(lam_bar, torch.exp(lam * delta))
    torch.testing.assert_close(b_bar, ((torch.exp(lam * delta) - 1) / lam)[:, None] * b)
    tiny = torch.full((3,), 1e-6, dtype=torch.float64)
    lam_bar, b_bar = h.discretize_zoh(lam, b, tiny)
    torch.testing.assert_close(lam_bar, torch.ones_like(lam_bar), atol=1e-5, rtol=0)
    torch.testing.assert_close(b_bar, 1e-6 * b, atol=1e-11, rtol=1e-4)


def test_hippo_init_properties():
    lam, v = h.hippo_init(128, 4)
    assert lam.shape == (128,) and v.shape == (128, 128)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-10)
    block = np.sort(lam.imag[:32])
    np.testing.assert_allclose(block, -block[::-1], atol=1e-8)  # imaginary parts in +- pairs
    assert np.abs(lam.imag).max() > 100  # up to about +-325 for N = 32
    np.testing.assert_allclose(v.conj().T @ v, np.eye(128), atol=1e-10)  # unitary
    for i in range(4):
        for j in range(4):
            blk = v[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
            assert (np.abs(blk).max() > 0) == (i == j)  # block diagonal with J = 4 blocks of 32
    np.testing.assert_allclose(np.tile(lam[:32], 4), lam)
    lam_s, v_s = h.make_hippo_legs(32)  # V diagonalises S = A + P P^T
    n = np.arange(32)
    q = np.sqrt(2 * n + 1.0)
    s = -np.tril(np.outer(q, q), -1) - np.diag(n + 1.0) + np.outer(np.sqrt(n + 0.5), np.sqrt(n + 0.5))
    np.testing.assert_allclose(v_s @ np.diag(lam_s) @ v_s.conj().T, s, atol=1e-8)
    ssm = h.S5SSM(16, 128, 4)
    assert math.log(1e-3) <= ssm.log_step.min().item() and ssm.log_step.max().item() <= math.log(1e-1)
    assert 0 <= ssm.D.min().item() and ssm.D.max().item() < 1


def test_batch_independence():
    torch.manual_seed(5)
    stack = h.S5Stack(6, 8, 2, 2, dropout=0.0)
    u = torch.randn(4, 16, 6)
    reset = torch.rand(4, 16) < 0.2
    reset[:, 0] = True
    y, s = stack(u, reset)
    u2, reset2 = u.clone(), reset.clone()
    u2[2] = torch.randn(16, 6) * 5
    reset2[2] = torch.rand(16) < 0.5
    y2, s2 = stack(u2, reset2)
    keep = [0, 1, 3]
    torch.testing.assert_close(y[keep], y2[keep])
    torch.testing.assert_close(s[keep], s2[keep])
    assert not torch.allclose(y[2], y2[2])


# ----------------------------------------------------------------------------------------------------------------------
# World model
# ----------------------------------------------------------------------------------------------------------------------


def debug_agent(obs_space=None, act_space=None, **kw):
    args = h.Args(model_size="debug", **kw)
    obs_space = obs_space or gym.spaces.Box(-1, 1, (5,), np.float32)
    return h.Agent(obs_space, act_space or gym.spaces.Discrete(3), args), args


def test_observe_equals_loop_of_obs_step():
    torch.manual_seed(6)
    agent, _ = debug_agent(dropout=0.1)
    wm = agent.levels[0].wm.eval()
    b, t = 3, 10
    obs = torch.randn(b, t, 5)
    action = torch.nn.functional.one_hot(torch.randint(0, 3, (b, t)), 3).float()
    is_first = torch.rand(b, t) < 0.2
    is_first[:, 0] = True
    is_first[0, 3:5] = True
    with torch.no_grad():
        embed = wm.encoder(obs)
        state, post_logits, prior_logits = wm.observe(embed, action, is_first)
        s = wm.initial(b)
        prev_a = torch.zeros(b, 3)
        for k in range(t):
            s, pl, prl = wm.obs_step(s, prev_a, embed[:, k], is_first[:, k], z=state["z"][:, k])
            torch.testing.assert_close(s["h"], state["h"][:, k], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(s["x"], state["x"][:, k], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(prl, prior_logits[:, k], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(pl, post_logits[:, k])
            prev_a = action[:, k]


def test_initial_state_reproduced_at_is_first():
    torch.manual_seed(7)
    agent, _ = debug_agent()
    wm = agent.levels[0].wm.eval()
    obs, action = torch.randn(2, 12, 5), torch.nn.functional.one_hot(torch.randint(0, 3, (2, 12)), 3).float()
    is_first = torch.zeros(2, 12, dtype=torch.bool)
    is_first[:, 0] = is_first[:, 7] = True
    with torch.no_grad():
        embed = wm.encoder(obs)
        z = wm.post(embed, sample=False)[1]
        full, _, prior = wm.observe(embed, action, is_first, z=z)
        tail, _, prior_tail = wm.observe(embed[:, 7:], action[:, 7:], is_first[:, 7:], z=z[:, 7:])
    # z_in = z_init and a_in = 0 at the inner is_first: the tail behaves exactly like a fresh sequence
    torch.testing.assert_close(full["h"][:, 7:], tail["h"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prior[:, 7:], prior_tail, atol=1e-5, rtol=1e-4)


def test_learned_initial_state_gets_gradient():
    """initial: learned (the original's Seq2SeqDynamics.initial): z_init = mode(prior(GELU(W))) carries a
    straight-through gradient back to W."""
    torch.manual_seed(8)
    agent, args = debug_agent()
    wm = agent.levels[0].wm
    obs, action = torch.randn(2, 6, 5), torch.nn.functional.one_hot(torch.randint(0, 3, (2, 6)), 3).float()
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[:, 0] = True
    z = wm.initial(1)["z"]
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.reshape(wm.S, wm.C).sum(-1) == 1)  # the value is one-hot
    loss = h.wm_loss(wm, obs, action, torch.randn(2, 6), is_first, torch.zeros(2, 6), args)[0]
    loss.backward()
    assert wm.init_w.grad is not None and wm.init_w.grad.abs().sum() > 0


def test_return_norm_ema_from_zero():
    """RewardEMA: low/high start at 0 and move by 1 % of the batch's 5th / 95th percentiles; scale = max(1, hi - lo)."""
    rn = h.ReturnNorm()
    ret = torch.linspace(0, 1000, 10001)  # p5 = 50, p95 = 950
    assert float(rn.update(ret)) == pytest.approx(9.0, rel=1e-5)  # 0.01 * (950 - 50)
    assert float(rn.low) == pytest.approx(0.5, rel=1e-5) and float(rn.high) == pytest.approx(9.5, rel=1e-5)
    rn.update(ret)
    assert float(rn.high) == pytest.approx(0.99 * 9.5 + 9.5, rel=1e-5)
    assert float(h.ReturnNorm().update(torch.linspace(0, 10, 101))) == 1.0  # the floor


def test_paper_size_shapes():
    obs_space, act_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(6)
    agent = h.Agent(obs_space, act_space, h.Args(model_size="paper"))
    lv0, lv1, lv2 = agent.levels
    assert lv0.wm.Z + lv0.wm.D == 1280 and lv0.wm.encoder.out_dim == 3072
    assert lv0.ac_dim == 1283 + 64 and lv2.ac_dim == 1283  # the top level receives no subgoal
    assert lv1.wm.encoder.net[0].in_features == 4096 + 1024
    state = lv0.wm.initial(2)
    assert state["x"].shape == (2, 4, 256) and state["x"].dtype == torch.complex64
    assert lv0.heads == ["extrinsic", "subgoal"] and lv1.heads == ["extrinsic", "subgoal", "novelty"]
    assert lv2.heads == ["extrinsic", "novelty"]
    flat = h.Agent(obs_space, act_space, h.Args(model_size="debug", max_hierarchy=1))
    assert flat.levels[0].heads == ["extrinsic"] and flat.levels[0].ae is None


def test_kl_free_bits():
    torch.manual_seed(8)
    post = torch.randn(5, 4, 4, requires_grad=True)
    prior = (post.detach() + 0.05 * torch.randn(5, 4, 4)).requires_grad_(True)  # KL < 1
    loss, dyn, rep = h.kl_loss(post, prior, free=1.0, dyn_scale=0.5, rep_scale=0.1)
    assert (dyn < 1).all() and (rep < 1).all()
    torch.testing.assert_close(loss, torch.full((5,), 0.6))  # >= free * scale, exactly at the floor
    loss.sum().backward()
    assert post.grad.abs().max() == 0 and prior.grad.abs().max() == 0
    far = torch.randn(5, 4, 4) * 5
    loss2, dyn2, rep2 = h.kl_loss(far, -far)
    assert (loss2 >= 0.6).all() and (dyn2 > 1).all()
    torch.testing.assert_close(loss2, 0.5 * dyn2 + 0.1 * rep2)


def test_twohot_and_symlog():
    y = torch.tensor([-300.0, -1.5, 0.0, 0.3, 7.0, 1000.0])
    logits = torch.log(torch.nn.functional.one_hot(torch.tensor(127), 255).float() + 1e-9).expand(6, -1)
    assert torch.allclose(h.TwoHot(logits).mean(), torch.zeros(6), atol=1e-4)
    # the maximum-likelihood logits of a two-hot target recover the value
    x = h.symlog(y)
    bins = torch.linspace(-20, 20, 255)
    below = (torch.bucketize(x, bins, right=True) - 1).clamp(0, 254)
    w = (x - bins[below]) / (bins[below + 1] - bins[below])
    target = torch.zeros(6, 255)
    target[torch.arange(6), below] = 1 - w
    target[torch.arange(6), below + 1] = w
    torch.testing.assert_close(h.TwoHot(torch.log(target + 1e-12)).mean(), y, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h.symexp(h.symlog(y)), y)
    assert h.symlog(torch.tensor(1.0)).item() == pytest.approx(math.log(2))


def test_onehot_sampling_matches_probs():
    torch.manual_seed(17)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(200_000, 4)
    sample = h.onehot_straight_through(probs, sample=True)
    torch.testing.assert_close(sample.mean(0), probs[0], atol=4e-3, rtol=0)  # Gumbel-max draws follow p
    assert torch.equal(sample.sum(-1), torch.ones(200_000))
    mode = h.onehot_straight_through(probs[:3], sample=False)
    assert torch.equal(mode.argmax(-1), torch.full((3,), 3))
    actor = h.Actor(6, 64, "code", h.SIZES["debug"])
    with torch.no_grad():
        actor.net[-1].weight.zero_()  # uniform code distribution
    codes = actor.sample(actor.dist(torch.randn(20_000, 6))).reshape(-1, 8, 8)
    torch.testing.assert_close(codes.mean(0), torch.full((8, 8), 1 / 8), atol=0.015, rtol=0)


def test_continuous_actor_log_prob_at_the_raw_sample_and_model_sees_the_clipped_action():
    """REINFORCE takes the log-density at the Gaussian sample itself; the env and the world model get it clipped to
    [-1, 1]. (Before: the sample was clipped first, and its log-density taken at +-1.)"""
    torch.manual_seed(0)
    actor = h.Actor(4, 2, "continuous", h.SIZES["debug"])
    with torch.no_grad():
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.copy_(torch.tensor([3.0, -3.0, 0.0, 0.0]))  # mean tanh(+-3) = +-0.995, std 0.9 s(2) + 0.1
    dist = actor.dist(torch.zeros(10_000, 4))
    a = actor.sample(dist)
    assert (a.abs() > 1).float().mean() > 0.4  # about half the draws fall outside [-1, 1] and are kept as drawn
    torch.testing.assert_close(actor.executed(a), a.clamp(-1, 1))
    std = 0.9 * torch.sigmoid(torch.tensor(2.0)) + 0.1
    normal = torch.distributions.Normal(torch.tanh(torch.tensor([3.0, -3.0])), std)
    torch.testing.assert_close(actor.log_prob(dist, a), normal.log_prob(a).sum(-1))

    seen = []

    class Model:
        def img_step(self, state, action):
            seen.append(action)
            return state, None

    class Lvl:
        wm = Model()

        def ac_input(self, state, logits, code):
            return torch.zeros(10_000, 4), torch.zeros(10_000), torch.ones(10_000)

    Lvl.actor = actor
    _, _, acts, _, _ = h._imagine_loop(Lvl(), {"h": torch.zeros(10_000, 3)}, None, None, 2, [], [], [], [], [])
    assert acts.abs().max() > 1 and len(seen) == 2
    for raw, fed in zip(acts, seen, strict=True):
        torch.testing.assert_close(fed, raw.clamp(-1, 1))


def test_lambda_return_against_closed_form():
    r, c, v = torch.rand(4, 3), torch.rand(4, 3), torch.rand(5, 3)
    ret = h.lambda_return(r, c, v, 1.0)  # lambda = 1: discounted reward sum + discounted bootstrap
    expect = r[3] + c[3] * v[4]
    for k in (2, 1, 0):
        expect = r[k] + c[k] * expect
    torch.testing.assert_close(ret[0], expect)
    torch.testing.assert_close(h.lambda_return(r, c, v, 0.0), r + c * v[1:])  # lambda = 0: one-step TD


def test_imagination_weight_values():
    gamma = 0.5
    c = torch.tensor([[1.0, 0.0], [0.8, 1.0], [0.5, 1.0], [1.0, 1.0]])  # (K+1=4, N=2): column 1 starts on a terminal state
    w = h.imagination_weight(gamma * c, gamma)  # w_k = gamma^k prod_{j<=k} c_j
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0], [0.4, 0.0], [0.1, 0.0]]))
    w = h.imagination_weight(gamma * c, gamma, original_indexing=True)  # w_k = prod_{j<k} gamma c_j
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0], [0.5, 0.0], [0.2, 0.0]]))


# ----------------------------------------------------------------------------------------------------------------------
# Hierarchy
# ----------------------------------------------------------------------------------------------------------------------


def test_schedule_and_level_rewards_over_64_steps():
    for level in range(3):
        acts = [t for t in range(64) if h.level_acts(t, level, 4)]
        assert acts == list(range(0, 64, 4**level))
        assert [c for c in range(64) if h.level_trains(c, level, 4)] == list(range(0, 64, 4**level))
    torch.manual_seed(9)
    agent, args = debug_agent(max_hierarchy=3)
    runner = h.HierarchyRunner(agent, 2, args, torch.device("cpu"))
    rewards = torch.rand(64, 2)
    seen = {0: [], 1: [], 2: []}
    for t in range(64):
        _, records = runner.step(torch.randn(2, 5), rewards[t], torch.tensor([t == 0] * 2), torch.zeros(2, dtype=torch.bool))
        for level, rec in enumerate(records):
            if rec is not None:
                seen[level].append((t, rec))
    for level in range(3):
        period = 4**level
        assert [t for t, _ in seen[level]] == list(range(0, 64, period))
        for t, rec in seen[level][1:]:  # reward of the record at t = mean r over (t - period, t]
            torch.testing.assert_close(rec["reward"], rewards[t - period + 1 : t + 1].mean(0))
        assert seen[level][0][1]["is_first"].all() and not seen[level][1][1]["is_first"].any()
    # level 0 is conditioned on the code level 1 emitted most recently (held for 4 steps)
    for t, rec in seen[0]:
        code_t = [r for s, r in seen[1] if s <= t][-1]["action"]
        torch.testing.assert_close(rec["code"], code_t)


def test_episode_start_masks_held_code_and_unreported_reward():
    """Spec 2.6: at an episode start the code held from the level above is masked (zero) until that level decides
    again, and the reward level 1 accumulated since its last decision in the old episode is dropped. (Here without
    `first` / `last`, so the clock does not restart and the start falls between level 1's decisions.)"""
    torch.manual_seed(10)
    agent, args = debug_agent(max_hierarchy=2)
    runner = h.HierarchyRunner(agent, 1, args, torch.device("cpu"))
    recs = []
    for t in range(7):  # level 1 decides at t = 0 and 4; an episode starts at t = 2 (after a reward of 5 at t = 1)
        _, r = runner.step(torch.randn(1, 5), torch.tensor([5.0 if t == 1 else 0.0]), torch.tensor([t in (0, 2)]),
                           torch.zeros(1, dtype=torch.bool))  # fmt: skip
        recs.append(r)
    assert recs[1][0]["code"].abs().sum() > 0  # held code of the level-1 decision at t = 0
    assert recs[2][0]["code"].abs().sum() == 0 and recs[3][0]["code"].abs().sum() == 0  # masked after the start
    torch.testing.assert_close(recs[4][0]["code"], recs[4][1]["action"])  # the new decision is used at once
    assert recs[4][1]["is_first"].all() and float(recs[4][1]["reward"]) == 0.0  # the old episode's 5 is not carried


def test_episode_end_is_recorded_by_every_level_and_restarts_the_clock():
    """Per-env clocks: the last step of an env's episode is a decision step of every level (its record carries the
    tail reward sum r / every^L since the level's last decision, and is_terminal), and the env's next episode restarts
    its clock; the other env keeps its schedule. Records say which envs they are for (`env_mask`)."""
    torch.manual_seed(11)
    agent, args = debug_agent(max_hierarchy=3)
    runner = h.HierarchyRunner(agent, 2, args, torch.device("cpu"))
    seen = {(level, e): [] for level in range(3) for e in range(2)}
    for t in range(12):  # env 0's episode ends at t = 5 (reward 8 and a terminal there), its next starts at t = 6
        first, last = np.array([t in (0, 6), t == 0]), np.array([t == 5, False])
        _, records = runner.step(torch.randn(2, 5), torch.tensor([8.0 if t == 5 else 0.0, 0.0]), torch.as_tensor(first),
                                 torch.as_tensor(last), first=first, last=last)  # fmt: skip
        for level, rec in enumerate(records):
            for e in np.flatnonzero(rec["env_mask"]) if rec is not None else []:
                seen[(level, e)].append((t, {k: v[e] for k, v in rec.items() if k != "env_mask"}))
    steps = {k: [t for t, _ in v] for k, v in seen.items()}
    assert steps[(0, 0)] == steps[(0, 1)] == list(range(12))
    assert steps[(1, 0)] == [0, 4, 5, 6, 10] and steps[(1, 1)] == [0, 4, 8]  # env 0's clock restarts at t = 6
    assert steps[(2, 0)] == [0, 5, 6] and steps[(2, 1)] == [0]
    for level, tail in ((1, 8.0 / 4), (2, 8.0 / 16)):
        rec = dict(seen[(level, 0)])
        assert float(rec[5]["reward"]) == pytest.approx(tail) and bool(rec[5]["is_terminal"])
        assert not rec[5]["is_first"] and rec[6]["is_first"] and float(rec[6]["reward"]) == 0.0
        assert not any(bool(r["is_terminal"]) for t, r in seen[(level, 0)] if t != 5)
    # each replay writes only the envs of a record: env 0 has more level-1 steps than env 1
    rep = h.SequenceReplay(100, 2, 2, h.replay_spec(agent.levels[1], gym.spaces.Box(-1, 1, (5,))), args, seed=0)
    runner.reset()
    for t in range(12):
        first, last = np.array([t in (0, 6), t == 0]), np.array([t == 5, False])
        _, records = runner.step(torch.randn(2, 5), torch.zeros(2), torch.as_tensor(first), torch.as_tensor(last),
                                 first=first, last=last)  # fmt: skip
        if records[1] is not None:
            rep.add(records[1])
    assert rep.count.tolist() == [5, 3] and len(rep) == 4 + 2


def test_subgoal_reward_hand_made():
    mc = lambda g, s: h.max_cosine(torch.tensor(g, dtype=torch.float32), torch.tensor(s, dtype=torch.float32)).item()
    assert mc([1, 0], [1, 0]) == pytest.approx(1.0)
    assert mc([2, 0], [1, 0]) == pytest.approx(0.5)
    assert mc([1, 0], [0, 1]) == pytest.approx(0.0)
    assert mc([1, 0], [-1, 0]) == pytest.approx(0.0)  # clamped
    assert mc([3, 4], [1.5, 2]) == pytest.approx(0.5)
    g, s = torch.randn(100, 7), torch.randn(100, 7)
    torch.testing.assert_close(h.max_cosine(g, s), h.max_cosine(s, g))
    assert (h.max_cosine(g, s) >= 0).all() and (h.max_cosine(g, s) <= 1).all()
    # r_goal = symlog(max_cosine(g^, symlog(h))): at g^ = symlog(h) it is symlog(1) = ln 2
    hh = torch.randn(3, 7)
    torch.testing.assert_close(h.subgoal_reward(h.symlog(hh), hh), torch.full((3,), math.log(2)))


def test_novelty_reward_and_autoencoder_code():
    torch.manual_seed(10)
    ae = h.SubgoalAutoencoder(16)
    hh = torch.randn(6, 16) * 3

    class Perfect:  # an autoencoder that reconstructs symlog(h) exactly up to an offset
        def __init__(self, err):
            self.err = err

        def encode(self, x):
            return torch.zeros(x.shape[0], 64), None

        def decode(self, code):
            return h.symlog(hh) + self.err

    assert torch.allclose(h.novelty_reward(Perfect(0.0), hh), torch.zeros(6))
    r = [h.novelty_reward(Perfect(e), hh).mean().item() for e in (0.1, 0.5, 2.0)]
    assert r[0] < r[1] < r[2]
    assert r[1] == pytest.approx(math.log1p(0.25), rel=1e-5)  # symlog of the mean squared error
    code, probs = ae.encode(hh.requires_grad_(True))
    c = code.reshape(6, 8, 8)
    assert torch.equal(c.sum(-1), torch.ones(6, 8)) and set(c.unique().tolist()) <= {0.0, 1.0}
    loss, _ = ae.loss(hh)
    (ae.decode(code) ** 2).sum().backward()  # straight-through: the encoder receives a gradient through the code
    assert ae.enc[0].weight.grad is not None and ae.enc[0].weight.grad.abs().sum() > 0
    assert torch.isfinite(loss)


def test_factored_code_actor():
    torch.manual_seed(11)
    cfg = h.SIZES["debug"]
    for factor_mean in (False, True):
        actor = h.Actor(10, 64, "code", cfg, factor_mean=factor_mean)
        dist = actor.dist(torch.randn(5, 10))
        a = actor.sample(dist)
        rows = a.reshape(5, 8, 8)
        assert torch.equal(rows.sum(-1), torch.ones(5, 8))
        per_factor = (rows * dist[1].log()).sum(-1)  # (5, 8)
        ent_factor = -(dist[1] * dist[1].log()).sum(-1)
        reduce = (lambda x: x.mean(-1)) if factor_mean else (lambda x: x.sum(-1))
        torch.testing.assert_close(actor.log_prob(dist, a), reduce(per_factor))
        torch.testing.assert_close(actor.entropy(dist), reduce(ent_factor))
        greedy = actor.sample(dist, greedy=True).reshape(5, 8, 8)
        torch.testing.assert_close(greedy.argmax(-1), dist[1].argmax(-1))


@pytest.mark.parametrize("act_space", [gym.spaces.Discrete(2), gym.spaces.Discrete(6), gym.spaces.Box(-1, 1, (3,))])
def test_default_first_policy_is_near_uniform(act_space):
    """The actor output layer of every level starts scaled by 0.01 (DreamerV3's policy outscale): the first policy's
    entropy is within 1 % of its maximum for discrete actions and for the 8x8 subgoal codes (summed over the factors:
    8 ln 8), and continuous actions start at DreamerV3's mean tanh(0) = 0 (within 0.05) and std 0.9 sigmoid(2) + 0.1 =
    0.8927 (within 1 %). --actor-init-scale 1 (the original's init) starts far from that."""
    std0 = 0.9 / (1.0 + math.exp(-2.0)) + 0.1
    for scale in (None, 1.0):
        torch.manual_seed(19)
        args = h.Args(model_size="small", max_hierarchy=3, **({} if scale is None else {"actor_init_scale": scale}))
        agent = h.Agent(gym.spaces.Box(-1, 1, (4,), np.float32), act_space, args)
        close = []  # per level: does the first policy match the near-uniform / DreamerV3 initial one to 1 %?
        for lv in agent.levels:
            x = 2.0 * torch.randn(256, lv.ac_dim)  # the hidden layers end in LayerNorm + SiLU: the input scale hardly matters
            with torch.no_grad():
                dist = lv.actor.dist(x)
                ent = lv.actor.entropy(dist)
            if dist[0] == "continuous":
                close.append(bool(dist[1].abs().max() < 0.05 and (dist[2] / std0 - 1).abs().max() < 0.01))
            else:
                top = math.log(act_space.n) if dist[0] == "discrete" else h.CODE_FACTORS * math.log(h.CODE_CLASSES)
                assert float(ent.max()) <= top + 1e-5
                close.append(float(ent.min()) >= 0.99 * top)
        assert all(close) if scale is None else not any(close), close


def test_goal_held_constant_in_imagination():
    torch.manual_seed(12)
    agent, args = debug_agent(max_hierarchy=2)
    lv = agent.levels[0]
    start = {k: v.expand(4, *v.shape[1:]).clone() for k, v in lv.wm.initial(1).items()}
    code = torch.nn.functional.one_hot(torch.randint(0, 8, (4, 8)), 8).float().flatten(1)
    xs, hs, acts, rew, cont = h.imagine(lv, start, torch.zeros(4, 4, 4), code, 5)
    assert xs.shape == (6, 4, lv.ac_dim) and acts.shape == (5, 4, 3)
    for k in range(6):
        torch.testing.assert_close(xs[k, :, -64:], code)
    # in training, the code comes from the replay record of each start index
    batch_code = torch.arange(2 * 3 * 64, dtype=torch.float32).reshape(2, 3, 64)
    assert torch.equal(batch_code.flatten(0, 1)[4], batch_code[1, 1])


def test_imagination_is_deterministic_given_its_noise(monkeypatch):
    """Imagination runs the world model without dropout (the original imagines in eval mode): with the sampling noise
    of z and a fixed, the trajectory is the same whatever the global RNG (which drives dropout) holds, and equals an
    eval-mode rollout. The model stays in training mode for its own loss."""
    torch.manual_seed(13)
    agent, _ = debug_agent(max_hierarchy=2, dropout=0.5)
    lv = agent.levels[0]
    agent.train()  # as in train_level: imagination is called with the whole agent in training mode
    b, t = 2, 5
    obs, action = torch.randn(b, t, 5), torch.nn.functional.one_hot(torch.randint(0, 3, (b, t)), 3).float()
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    with torch.no_grad():
        state, post_logits, _ = lv.wm.observe(lv.wm.encoder(obs), action, is_first)
    start = {k: v.flatten(0, 1) for k, v in state.items()}
    logits = post_logits.flatten(0, 1)
    code = torch.nn.functional.one_hot(torch.randint(0, 8, (b * t, 8)), 8).float().flatten(1)
    real_rand_like = torch.rand_like

    def rollout(global_seed):
        noise = torch.Generator().manual_seed(0)  # the sampling noise (Gumbel uniforms of z and a): the same every time
        monkeypatch.setattr(torch, "rand_like", lambda x: torch.rand(x.shape, generator=noise, dtype=x.dtype))
        torch.manual_seed(global_seed)  # everything else random (dropout masks) draws from here
        out = h.imagine(lv, start, logits, code, 6)
        monkeypatch.setattr(torch, "rand_like", real_rand_like)
        return out

    first, second = rollout(1), rollout(2)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)
    assert all(m.training for m in lv.wm.modules())  # back in training mode: the world-model loss keeps its dropout
    with h.eval_mode(lv.wm):
        in_eval = rollout(3)
    for a, c in zip(first, in_eval, strict=True):
        assert torch.equal(a, c)
    # the check has teeth: a training-mode step of this model does depend on the global RNG (dropout 0.5 is active)
    act = torch.nn.functional.one_hot(torch.randint(0, 3, (b * t,)), 3).float()
    with torch.no_grad():
        torch.manual_seed(1)
        h1 = lv.wm.img_step(start, act, sample=False)[0]["h"]
        torch.manual_seed(2)
        h2 = lv.wm.img_step(start, act, sample=False)[0]["h"]
    assert not torch.equal(h1, h2)


# ----------------------------------------------------------------------------------------------------------------------
# ETBS
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10, 1000])
@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0])
def test_etbs_pmf_valid(n, tau):
    for m in (n, 1_000_000):
        pmf = h.etbs_pmf(n, m, tau)
        assert (pmf >= -1e-12).all() and pmf.sum() == pytest.approx(1.0, abs=1e-9)
        idx = h.etbs_index(np.random.default_rng(0).random(5000), n, m, tau)
        assert idx.min() >= 0 and idx.max() <= n - 1


def test_etbs_uniform_at_tau0_and_recency_at_tau1():
    np.testing.assert_allclose(h.etbs_pmf(50, 50, 0.0), np.full(50, 1 / 50), atol=1e-9)
    n = 40
    pmf = h.etbs_pmf(n, n, 1.0)
    assert (np.diff(pmf) >= -1e-9).all() and pmf[-1] > 5 * pmf[0]  # newer keys are at least as likely
    # M = N, tau = 1: P(i) = (F^-1((i+1)/N) - F^-1(i/N)) / N
    grid = np.linspace(2, n + 2, 200001)
    cdf = h.etbs_cdf(grid, n)
    finv = np.interp(np.arange(n + 1) / n, cdf, grid)
    np.testing.assert_allclose(pmf, np.diff(finv) / n, atol=1e-5)


def test_etbs_cdf_closed_form():
    for n_keys in (1, 10, 500):
        n = n_keys + 2
        assert h.etbs_cdf(2.0, n_keys) == pytest.approx(0.0, abs=1e-12)
        assert h.etbs_cdf(float(n), n_keys) == pytest.approx(1.0)
        xs = np.linspace(2, n, 101)
        assert (np.diff(h.etbs_cdf(xs, n_keys)) >= 0).all()
        ys = np.linspace(2, n, 200001)
        dens = np.log(n / ys)
        z = np.trapezoid(dens, ys)
        for x in (2.5, 2 + (n - 2) / 3, n - 0.5):
            m = ys <= x
            assert np.trapezoid(dens[m], ys[m]) / z == pytest.approx(h.etbs_cdf(x, n_keys), abs=1e-4)


def test_etbs_monte_carlo_matches_pmf():
    rng = np.random.default_rng(13)
    for n, m, tau in ((20, 20, 1.0), (20, 20, 0.3), (50, 1_000_000, 0.3)):
        pmf = h.etbs_pmf(n, m, tau)
        draws = 1_000_000
        counts = np.bincount(h.etbs_index(rng.random(draws), n, m, tau), minlength=n)
        live = pmf * draws > 5
        chi2 = (((counts - pmf * draws) ** 2)[live] / (pmf * draws)[live]).sum()
        dof = live.sum() - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof)  # far inside the chi-square tail
        expected_rare = pmf[~live].sum() * draws
        assert counts[~live].sum() <= 3 * expected_rare + 10
    n = 1000  # M = capacity >> N, tau = 0.3: the oldest ~30 % are (almost) never drawn
    idx = h.etbs_index(rng.random(200_000), n, 1_000_000, 0.3)
    assert (idx < math.floor(0.3 * (n - 1))).mean() < 1e-3


def test_etbs_time_balance_beats_uniform():
    rng = np.random.default_rng(14)
    inserts, k = 5000, 16
    cv = {}
    for name in ("uniform", "etbs"):
        counts = np.zeros(inserts)
        for n in range(1, inserts + 1):
            u = rng.random(k)
            idx = h.etbs_index(u, n, n, 1.0) if name == "etbs" else np.minimum((u * n).astype(int), n - 1)
            np.add.at(counts, idx, 1)
        cv[name] = counts.std() / counts.mean()
    assert cv["etbs"] < 0.7 * cv["uniform"], cv


def test_replay_sequences_and_wraparound():
    args = h.Args(model_size="debug", replay="uniform")
    spec = {"obs": ((2,), np.float32), "is_first": ((), bool)}
    rep = h.SequenceReplay(capacity=20, num_envs=2, length=4, spec=spec, args=args, seed=0)
    for t in range(25):  # 25 steps per env, capacity 10 per env: wrapped
        rep.add({"obs": np.array([[t, 0], [t, 1]], np.float32), "is_first": np.zeros(2, bool)})
    assert len(rep) == 2 * (10 - 4 + 1)
    batch = rep.sample(64)
    t0 = batch["obs"][:, :, 0]
    assert (np.diff(t0, axis=1) == 1).all() and t0.min() >= 15 and t0.max() <= 24  # contiguous, not overwritten
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert not batch["episode_first"].any()  # the env's episode starts: none in these windows


def test_reward_mask_at_first_spares_the_forced_window_start():
    """--no-reward-loss-at-first masks the reward loss at the env's episode starts only, not at step 0 of every sampled
    window (which the replay marks is_first so that the S5 starts fresh)."""
    torch.manual_seed(9)
    agent, args = debug_agent()
    args.reward_loss_at_first = False
    wm = agent.levels[0].wm
    obs, action = torch.randn(2, 6, 5), torch.nn.functional.one_hot(torch.randint(0, 3, (2, 6)), 3).float()
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[:, 0] = True  # the window start
    episode_first = torch.zeros(2, 6, dtype=torch.bool)
    episode_first[1, 3] = True  # one real episode start inside the second window
    reward = torch.ones(2, 6)
    wm.eval()  # no dropout: the two passes below see the same model
    with torch.no_grad():
        rew = h.wm_loss(wm, obs, action, reward, is_first, torch.zeros(2, 6), args, episode_first)[3]["wm_reward"]
        args.reward_loss_at_first = True
        full = h.wm_loss(wm, obs, action, reward, is_first, torch.zeros(2, 6), args, episode_first)[3]["wm_reward"]
        args.reward_loss_at_first = False
        old = h.wm_loss(wm, obs, action, reward, is_first, torch.zeros(2, 6), args)[3]["wm_reward"]  # mask = is_first
    # per-step reward losses are equal here (same target, ~zero-initialised head): the masks count 1, 0 and 2 steps
    torch.testing.assert_close(rew, full * 11 / 12, rtol=1e-3, atol=0)
    torch.testing.assert_close(old, full * 10 / 12, rtol=1e-3, atol=0)


def test_replay_keys_lockstep_and_per_env():
    """Lockstep writes give the original's key order k = (env k % E, start k // E); per-env (masked) writes keep each
    env's stream contiguous, count only keys whose steps are all stored, and survive a state round trip."""
    args = h.Args(model_size="debug", replay="etbs")
    spec = {"obs": ((2,), np.float32), "is_first": ((), bool)}
    E, T = 3, 4
    rep = h.SequenceReplay(capacity=30, num_envs=E, length=T, spec=spec, args=args, seed=0)  # 10 steps per env
    for t in range(37):
        rep.add({"obs": np.array([[t, e] for e in range(E)], np.float32), "is_first": np.zeros(E, bool)})
        c = t + 1
        n = E * max(0, c - T + 1) - E * max(0, c - 10)
        ring = rep._valid()
        assert len(rep) == n and list(zip(rep.key_env[ring], rep.key_start[ring], strict=True)) == [
            (k % E, k // E) for k in range(E * max(0, c - 10), E * max(0, c - 10) + n)
        ]
    rep = h.SequenceReplay(capacity=30, num_envs=E, length=T, spec=spec, args=args, seed=0)
    for t in range(600):  # env e writes every (e + 1)-th step
        mask = np.array([True, t % 2 == 0, t % 3 == 0])
        rep.add({"obs": np.array([[t, e] for e in range(E)], np.float32), "is_first": np.zeros(E, bool), "env_mask": mask})
        assert len(rep) == sum(max(0, min(c, 10) - T + 1) for c in rep.count)
    o = rep.sample(256)["obs"]
    for e in range(E):
        mine = o[o[:, 0, 1] == e]
        assert len(mine) and (np.diff(mine[:, :, 0], axis=1) == e + 1).all() and mine[:, 0, 0].min() >= 600 - 10 * (e + 1)
    # random masks, and counts that become equal again after uneven writes: never an overwritten or broken sequence
    rng = np.random.default_rng(0)
    rep4 = h.SequenceReplay(capacity=20, num_envs=2, length=4, spec=spec, args=args, seed=0)
    masks = [[False, True]] * 4 + [[True, False]] * 14 + [[False, True]] * 10 + [rng.random(2) < 0.5 for _ in range(300)]
    for t, mask in enumerate(masks):
        rep4.add({"obs": np.array([[t, 0], [t, 1]], np.float32), "is_first": np.zeros(2, bool), "env_mask": np.array(mask)})
        assert len(rep4) == sum(max(0, min(c, 10) - T + 1) for c in rep4.count)
        if len(rep4):
            o = rep4.sample(64)["obs"]
            assert (np.diff(o[:, :, 0], axis=1) > 0).all() and (o[:, :, 1] == o[:, :1, 1]).all()
    rep2 = h.SequenceReplay(capacity=30, num_envs=E, length=T, spec=spec, args=args, seed=1)
    rep2.load_state_dict(rep.state_dict())
    b1, b2 = rep.sample(8), rep2.sample(8)
    assert len(rep2) == len(rep) and all((b1[k] == b2[k]).all() for k in b1)


# ----------------------------------------------------------------------------------------------------------------------
# Training step and end-to-end smoke runs
# ----------------------------------------------------------------------------------------------------------------------


def test_train_level_updates_all_parts():
    torch.manual_seed(15)
    agent, args = debug_agent(max_hierarchy=2, imag_horizon=3)
    lv = agent.levels[0]
    opts, sched = h.make_optimizers(lv, args)
    b, t = 2, 6
    flag = torch.zeros(b, t, dtype=torch.bool)
    batch = dict(obs=torch.randn(b, t, 5), action=torch.nn.functional.one_hot(torch.randint(0, 3, (b, t)), 3).float(),
                 reward=torch.randn(b, t), is_first=flag, is_terminal=flag, subgoal=torch.randn(b, t, 16),
                 code=torch.zeros(b, t, 64))  # fmt: skip
    before = {n: p.detach().clone() for n, p in lv.named_parameters()}
    import contextlib

    m = h.train_level(lv, opts, sched, batch, args, h.wm_loss, contextlib.nullcontext)
    assert all(torch.isfinite(v).all() for v in m.values())
    for part in ("wm.encoder", "wm.stack", "actor", "critics.extrinsic", "critics.subgoal", "ae"):
        assert any(not torch.equal(before[n], p) for n, p in lv.named_parameters() if n.startswith(part)), part
    assert {"imag_ext_reward", "imag_subgoal_reward", "wm_kl_dyn", "actor", "ae"} <= set(m)


def test_behavior_starts_trains_world_model_only_first():
    torch.manual_seed(16)
    agent, args = debug_agent(max_hierarchy=1, imag_horizon=2, behavior_starts=2)
    lv = agent.levels[0]
    opts, sched = h.make_optimizers(lv, args)
    flag = torch.zeros(2, 4, dtype=torch.bool)
    batch = dict(obs=torch.randn(2, 4, 5), action=torch.zeros(2, 4, 3), reward=torch.ones(2, 4), is_first=flag,
                 is_terminal=flag, subgoal=torch.zeros(2, 4, 16), code=torch.zeros(2, 4, 64))  # fmt: skip
    import contextlib

    actor_before = [p.detach().clone() for p in lv.actor.parameters()]
    keys = [set(h.train_level(lv, opts, sched, batch, args, h.wm_loss, contextlib.nullcontext)) for _ in range(3)]
    assert "actor" not in keys[0] and "actor" not in keys[1] and "actor" in keys[2]
    assert lv.get_extra_state() == {"updates": 3}
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, lv.actor.parameters(), strict=True))


ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "8", "--imag-horizon", "4",
         "--log-every", "32"]  # fmt: skip


def run_script(tmp_path, *flags, check=True):
    cmd = [sys.executable, SCRIPT, *SMALL, *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("levels", [1, 3])
def test_smoke_cartpole_save_evaluate(tmp_path, levels):
    proc = run_script(tmp_path, "--env-id", "CartPole-v1", "--total-timesteps", "96", "--max-hierarchy", str(levels),
                      "--subactor-update-every", "2", "--save-model", "--eval-episodes", "2",
                      "--log-every", "1000")  # fmt: skip
    assert "model saved to" in proc.stdout and "eval: 2 episodes, return " in proc.stdout
    assert "step 96/96" in proc.stdout
    # the actor entropy of every level is charted from its first update on (here log lines are otherwise only at the end)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = {p.parent for p in tmp_path.glob("runs/*/events.out.tfevents.*")}
    events = EventAccumulator(str(logdir)).Reload()
    updates = events.Scalars("charts/updates")
    first_update_step = min(e.step for e in updates if e.value >= 1)
    assert first_update_step < 40  # learning starts at B * T = 16 steps, 0.5 level-0 updates per step
    for i in range(levels):
        entropy = events.Scalars(f"losses/entropy_L{i}")
        assert entropy[0].step < 96 and len(entropy) >= 2, (i, entropy)  # charted when level i first updated its actor
    assert events.Scalars("losses/entropy_L0")[0].step == first_update_step
    (model,) = tmp_path.glob("runs/*/hieros_s5_torch.cleanrl_model")
    returns = h.evaluate(str(model), common.make_env, None, 1, "test-eval", seed=3)  # env id None: the saved one
    assert len(returns) == 1 and returns[0] >= 1
    if levels == 3:  # the --evaluate command line once (a model evaluated on another env: tests/test_reliability_hieros.py)
        ev = run_script(tmp_path, "--env-id", "CartPole-v1", "--evaluate", str(model), "--eval-episodes", "1")
        assert "eval: 1 episodes, return " in ev.stdout


@pytest.mark.slow
def test_smoke_crafter_three_levels(tmp_path):
    proc = run_script(tmp_path, "--env-id", "crafter", "--total-timesteps", "64", "--subactor-update-every", "2",
                      "--save-model", "--eval-episodes", "0")  # fmt: skip
    assert "model saved to" in proc.stdout and "step 64/64" in proc.stdout


@pytest.mark.slow
def test_smoke_atari_pong(tmp_path):
    proc = run_script(tmp_path, "--env-id", "atari100k_pong", "--total-timesteps", "48", "--max-hierarchy", "2",
                      "--bf16-autocast", "--replay", "uniform")  # fmt: skip
    assert "step 48/48" in proc.stdout


@pytest.mark.slow
def test_smoke_pendulum_continuous_actions(tmp_path):
    proc = run_script(tmp_path, "--env-id", "Pendulum-v1", "--total-timesteps", "32", "--max-hierarchy", "1")
    assert "step 32/32" in proc.stdout


@pytest.mark.slow
def test_resume_continues_step_counter_and_checks_config(tmp_path):
    run_script(
        tmp_path, "--env-id", "CartPole-v1", "--total-timesteps", "48", "--checkpoint-every", "48", "--max-hierarchy", "2"
    )
    (ckpt,) = tmp_path.glob("runs/*/checkpoint.ckpt")
    state = h.load_file(str(ckpt), kind="checkpoint")
    with np.load(ckpt.parent / state["replay"]) as f:
        assert state["global_step"] == 48 and int(f["global_step"]) == 48 and f["L0_count"].sum() == 48
    proc = run_script(
        tmp_path, "--env-id", "CartPole-v1", "--total-timesteps", "80", "--max-hierarchy", "2", "--resume", str(ckpt)
    )
    assert "resumed from" in proc.stdout and "global_step=48" in proc.stdout and "step 80/80" in proc.stdout
    # a resume with other flags is refused by name: the row resume-other-flags of tests/test_reliability_hieros.py


@pytest.mark.slow
def test_nonfinite_loss_stops_with_named_term_and_checkpoint(tmp_path):
    # a learning rate of 1e30 blows the parameters up within a few updates: the run must stop at the next logging point
    # with exit 1, one message naming the term, and the training state written for inspection
    proc = run_script(tmp_path, "--env-id", "CartPole-v1", "--total-timesteps", "200", "--max-hierarchy", "1",
                      "--learning-starts", "16", "--model-lr", "1e30", "--actor-lr", "1e30", "--critic-lr", "1e30",
                      check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if "non-finite" in x]
    # the first log line comes right after the first actor update (its entropy is charted from there): the world model
    # blown up by that update's step makes the same update's imagination, actor and critic losses non-finite
    assert re.search(r"non-finite loss detected in losses/(wm_loss|actor|critic)_L0 ", line), line
    (ckpt,) = tmp_path.glob("runs/*/checkpoint_nonfinite.ckpt")
    state = h.load_file(str(ckpt))
    assert state["kind"] == "checkpoint" and state["agent"]["levels.0._extra_state"]["updates"] >= 1
