"""Numerical parity of thick_dreamer_jax.py with the THICK references, on golden values (no reference code needed).

- THIX, brahmasp/thix@a5054b4 (the upstream snapshot of "THICK world models in JAX"): the goldens in
  tests/data/parity_thick_*.npz hold THIX's inputs, parameters (in THIX's names) and outputs, written by
  benchmark/parity/thick_reference.py (see its --help to re-create them from a THIX checkout). Compared: the GateL0RD
  context step (gate, straight-through Heaviside, c update; gate noise injected on both sides), the C-RSSM observe
  step where the two designs coincide (block GRU, prior, posterior) with the gradients of every shared parameter, the
  KL terms and the hinged sparsity loss, and the high-level target extraction.
- CognitiveModeling/THICK@934980a (the TensorFlow original, the only code with THICK Dreamer's value mixing): the critic
  target psi * ret + (1 - psi) * V_long against numbers computed by hand from its formula.
Where our design deliberately differs (the coarse prior's input, the posterior input of the high-level action, change
detection by gates instead of context differences, the long-horizon value's convention) the test checks exactly that
difference. Randomness is never matched: the gate noise is an input, and no sampled output is compared.
"""

from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import thick_dreamer_jax as td

DATA = Path(__file__).parent / "data"
RTOL = 1e-5  # float32, relative to the largest magnitude of the reference tensor
ATOL = 1e-7  # for reference tensors that are exactly zero (no path from the loss to that input)

# THIX parameter name (dreamerv3/nets/crssm.py, CRSSM named "dyn")  ->  path in thick_dreamer_jax's params["rssm"]
# fmt: off
PARAM_MAP = {
    "dyn/stochproj/kernel":       "embed_z/Linear_0/kernel",           # z_{t-1} embedding (Linear -> RMSNorm -> SiLU)
    "dyn/stochproj/bias":         "embed_z/Linear_0/bias",
    "dyn/stochproj/norm/scale":   "embed_z/NormSiLU_0/scale",
    "dyn/actionproj/kernel":      "embed_a/Linear_0/kernel",           # a_{t-1} embedding
    "dyn/actionproj/bias":        "embed_a/Linear_0/bias",
    "dyn/actionproj/norm/scale":  "embed_a/NormSiLU_0/scale",
    "dyn/coarse/update/kernel":   "gate/kernel",                       # GateL0RD: one Linear, [gate | candidate]
    "dyn/coarse/update/bias":     "gate/bias",
    "dyn/dynin0/kernel":          "embed_h/Linear_0/kernel",           # GRU input embeddings of h_{t-1} and c_t
    "dyn/dynin0/bias":            "embed_h/Linear_0/bias",
    "dyn/dynin0/norm/scale":      "embed_h/NormSiLU_0/scale",
    "dyn/dynin3/kernel":          "embed_c/Linear_0/kernel",
    "dyn/dynin3/bias":            "embed_c/Linear_0/bias",
    "dyn/dynin3/norm/scale":      "embed_c/NormSiLU_0/scale",
    "dyn/dyn0/kernel":            "core_hidden/kernel",                # block-GRU: block linear -> RMSNorm -> SiLU
    "dyn/dyn0/bias":              "core_hidden/bias",
    "dyn/dyn0/norm/scale":        "core_norm/scale",
    "dyn/dyncore/kernel":         "core_gates/kernel",                 # block linear to [reset | candidate | update]
    "dyn/dyncore/bias":           "core_gates/bias",
    "dyn/img0/kernel":            "prior_layers_0/Linear_0/kernel",    # prior p(z_t | h_t, c_t): 2 layers + logits
    "dyn/img0/bias":              "prior_layers_0/Linear_0/bias",
    "dyn/img0/norm/scale":        "prior_layers_0/NormSiLU_0/scale",
    "dyn/img1/kernel":            "prior_layers_1/Linear_0/kernel",
    "dyn/img1/bias":              "prior_layers_1/Linear_0/bias",
    "dyn/img1/norm/scale":        "prior_layers_1/NormSiLU_0/scale",
    "dyn/imglogit/kernel":        "prior_out/kernel",
    "dyn/imglogit/bias":          "prior_out/bias",
    "dyn/obs0/kernel":            "post_layer/Linear_0/kernel",        # posterior q(z_t | h_t, c_t, e_t): 1 layer + logits
    "dyn/obs0/bias":              "post_layer/Linear_0/bias",
    "dyn/obs0/norm/scale":        "post_layer/NormSiLU_0/scale",
    "dyn/obslogit/kernel":        "post_out/kernel",
    "dyn/obslogit/bias":          "post_out/bias",
    # coarse prior: the same hidden layer and logits, but a different input (test_coarse_prior_documented_difference)
    "dyn/coarse0/bias":           "coarse_layer/Linear_0/bias",
    "dyn/coarse0/norm/scale":     "coarse_layer/NormSiLU_0/scale",
    "dyn/coarselogit/kernel":     "coarse_out/kernel",
    "dyn/coarselogit/bias":       "coarse_out/bias",
}
# fmt: on
# THIX's coarse prior reads the GateL0RD cell's output head y = sigmoid(W_o [x, c_t]) * tanh(W_p [x, c_t]) (C wide);
# ours reads [c_t, emb z_{t-1}, emb a_{t-1}] (C + 2 hidden wide) and has no output head.
THIX_ONLY = {"dyn/coarse/out/kernel", "dyn/coarse/out/bias", "dyn/coarse0/kernel"}
OURS_ONLY = {"coarse_layer/Linear_0/kernel"}


@pytest.fixture(scope="module")
def gold():
    with np.load(DATA / "parity_thick_crssm.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def agent(gold):
    deter, hidden, stoch, classes, ctx, blocks, embed, act = gold["meta/sizes"].tolist()
    size = td.SIZES["debug"]  # the goldens are written at this preset's sizes (units = the encoder's output width)
    assert [size[k] for k in ("deter", "hidden", "stoch", "classes", "units")] == [deter, hidden, stoch, classes, embed]
    noise, unimix, free, sparse_free = gold["meta/constants"].tolist()
    thick = dict(context_dim=ctx, gate_noise=noise, latent_unimix=unimix, free_nats=free, sparse_free=sparse_free)
    args = td.Args(env_id="CartPole-v1", model_size="debug", batch_size=2, batch_length=12, horizon=333, **thick)
    assert blocks == td.RSSM.blocks
    return td.Agent(args, gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Box(-1, 1, (act,), np.float32))


def get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def put(tree, path, value):
    *head, last = path.split("/")
    for k in head:
        tree = tree.setdefault(k, {})
    tree[last] = jnp.asarray(value)


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out |= flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v}
    return out


def rssm_init(agent, gold):
    """Our C-RSSM's parameter tree (nested dicts of zero arrays of our shapes; every mapped entry is overwritten), for an
    embedding e_t of the goldens' width (the debug preset's encoder output on vector observations)."""
    h, z, a = jnp.zeros((1, agent.deter)), jnp.zeros((1, agent.stoch, agent.classes)), jnp.zeros((1, agent.act_dim))
    e, c = jnp.zeros((1, int(gold["meta/sizes"][6]))), jnp.zeros((1, agent.ctx))
    shapes = jax.eval_shape(agent.rssm.init, jax.random.PRNGKey(0), h, z, a, e, c)["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), unfreeze(shapes))


def unfreeze(tree):
    return {k: unfreeze(v) if hasattr(v, "items") else v for k, v in tree.items()}


def our_params(gold, agent):
    """THIX's parameters put into our tree (the coarse prior's kernel, whose input differs, stays zero)."""
    p = rssm_init(agent, gold)
    for ref, ours in PARAM_MAP.items():
        put(p, ours, gold[f"param/{ref}"])
    return p


def rel_err(ours, ref):
    """max |ours - ref| / max |ref| (the absolute error where the reference is exactly zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max()
    return np.abs(ours - ref).max() / scale if scale > 0 else np.abs(ours).max()


def assert_close(name, ours, ref, rtol=RTOL):
    err = rel_err(ours, ref)
    assert err <= (rtol if np.abs(np.asarray(ref)).max() > 0 else ATOL), f"{name}: relative error {err:.2e}"
    return err


@pytest.fixture
def gate_eps(monkeypatch, gold):
    """Inject the golden gate noise: our context step draws jax.random.normal(key, (B, C)); return eps instead."""
    eps, normal = gold["step_in/gate_eps"], jax.random.normal

    def fake(key, shape=(), dtype=jnp.float32):
        if tuple(shape) != eps.shape:
            return normal(key, shape, dtype)
        return jnp.asarray(eps, dtype)

    monkeypatch.setattr(jax.random, "normal", fake)
    return eps


def our_step(agent, p, x):
    """One observe step of our C-RSSM (Agent.observe with T = 1) and the prior of its (h_t, c_t)."""
    seq = [x[k][:, None] for k in ("embed", "action", "reset")]  # (B, T = 1, ...)
    h, _, post, thick = agent.observe({"rssm": p}, x["deter"], x["stoch"], x["context"], *seq, jax.random.PRNGKey(1))
    h, post, c, theta = h[:, 0], post[:, 0], thick["c"][:, 0], thick["theta"][:, 0]
    return {"deter": h, "logit": post, "context": c, "coarse_gates": theta, "prior_logit": agent.prior({"rssm": p}, h, c)}


STEP_INPUTS = ("deter", "stoch", "context", "action", "embed")


def step_grads(agent, gold, p, full: bool):
    """Gradients of the weighted output sum the generator differentiated in THIX (context path only, or all outputs)."""
    w = {k: gold[f"step_in/w_{k}"] for k in ("gates", "context", "deter", "logit", "prior")}
    x = {k: jnp.asarray(gold[f"step_in/{k}"]) for k in (*STEP_INPUTS, "reset")}

    def loss(p, inputs):
        o = our_step(agent, p, x | inputs)
        pairs = [("gates", "coarse_gates"), ("context", "context")]
        pairs += [("deter", "deter"), ("logit", "logit"), ("prior", "prior_logit")] if full else []
        return sum(jnp.sum(w[a] * o[b]) for a, b in pairs)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(p, {k: x[k] for k in STEP_INPUTS})


# ======================================================================================================================
# Parameters
# ======================================================================================================================


def test_parameter_table_covers_both_trees(gold, agent):
    ours = {k: v.shape for k, v in flat(rssm_init(agent, gold)).items()}
    ref = {k[len("param/") :]: v.shape for k, v in gold.items() if k.startswith("param/")}
    assert set(PARAM_MAP) | THIX_ONLY == set(ref), "every THIX parameter is mapped or listed as THIX-only"
    assert set(PARAM_MAP.values()) | OURS_ONLY == set(ours), "every parameter of ours is mapped or listed as ours-only"
    for r, o in PARAM_MAP.items():
        assert ref[r] == ours[o], (r, o, ref[r], ours[o])  # identical shapes and layouts: no transposes anywhere
    c, hidden = gold["meta/sizes"][4], gold["meta/sizes"][1]
    assert ref["dyn/coarse0/kernel"] == (c, hidden) and ours["coarse_layer/Linear_0/kernel"] == (c + 2 * hidden, hidden)


# ======================================================================================================================
# GateL0RD context step and the C-RSSM step
# ======================================================================================================================


def test_context_step_gate_straight_through_and_c_update(gold, agent, gate_eps):
    """c_t = Lambda r + (1 - Lambda) c_{t-1}, Theta = H(Lambda) forward and dTheta/dLambda = 1 backward, with the same
    injected gate noise (THIX: dreamerv3/nets/gatel0rd.py Gatel0rdCell, called from crssm.py CRSSM.coarse)."""
    p = our_params(gold, agent)
    x = {k: jnp.asarray(gold[f"step_in/{k}"]) for k in (*STEP_INPUTS, "reset")}
    o = jax.jit(lambda p, x: our_step(agent, p, x))(p, x)
    theta = np.asarray(o["coarse_gates"])
    np.testing.assert_array_equal(theta, gold["step_out/coarse_gates"])  # the same gates open, exactly
    assert 0 < theta.mean() < 1  # some open, some closed
    assert_close("context", o["context"], gold["step_out/context"])
    closed = theta == 0  # a closed gate copies c_{t-1} bitwise (after the reset of row 1)
    c_prev = np.where(gold["step_in/reset"][:, None], 0.0, gold["step_in/context"])
    np.testing.assert_array_equal(np.asarray(o["context"])[closed], c_prev[closed])
    gp, gx = step_grads(agent, gold, p, full=False)
    for ref, ours in PARAM_MAP.items():
        assert_close(f"grad {ref}", get(gp, ours), gold[f"grad_gate/param/{ref}"])
    for k in STEP_INPUTS:
        assert_close(f"grad {k}", gx[k], gold[f"grad_gate/in/{k}"])
    assert np.abs(gold["grad_gate/param/dyn/coarse/update/kernel"]).max() > 0.1  # the straight-through path carries signal


def test_crssm_step_where_the_designs_coincide(gold, agent, gate_eps):
    """One observe step: block GRU on [emb h, emb z, emb a, emb c], prior on [h, c], posterior on [h, c, e] (THIX:
    dreamerv3/nets/crssm.py CRSSM.observe, CRSSM._prior), outputs and the gradients of every shared parameter."""
    p = our_params(gold, agent)
    x = {k: jnp.asarray(gold[f"step_in/{k}"]) for k in (*STEP_INPUTS, "reset")}
    o = jax.jit(lambda p, x: our_step(agent, p, x))(p, x)
    for k in ("deter", "logit", "prior_logit"):
        assert_close(k, o[k], gold[f"step_out/{k}"])
    gp, gx = step_grads(agent, gold, p, full=True)
    for ref, ours in PARAM_MAP.items():
        if not ref.startswith(("dyn/coarse0", "dyn/coarselogit")):  # the coarse prior is not in this sum
            assert np.abs(gold[f"grad_step/param/{ref}"]).max() > 0, ref  # every shared tensor gets signal
        assert_close(f"grad {ref}", get(gp, ours), gold[f"grad_step/param/{ref}"])
    for k in STEP_INPUTS:
        assert_close(f"grad {k}", gx[k], gold[f"grad_step/in/{k}"])


def test_coarse_prior_documented_difference(gold, agent, gate_eps):
    """Deliberate difference: THIX's coarse prior reads the GateL0RD output head y = sigmoid(W_o [x, c_t]) *
    tanh(W_p [x, c_t]) (crssm.py CRSSM._coarse_prior on gatel0rd.py's output), ours reads [c_t, emb z_{t-1}, emb a_{t-1}]
    directly (one hidden layer, no output head; RSSM.coarse_prior). Check: the layers after the input coincide (our
    coarse prior given y in c's slot and zero weights for the embeddings reproduces THIX's logits), and with its real
    input ours gives other logits."""
    p = our_params(gold, agent)
    k0 = gold["param/dyn/coarse0/kernel"]  # (C, hidden): THIX's hidden layer on y, put in c's rows of our (C + 2H, H)
    put(p, "coarse_layer/Linear_0/kernel", np.concatenate([k0, np.zeros((2 * k0.shape[1], k0.shape[1]), np.float32)]))
    x = {k: jnp.asarray(gold[f"step_in/{k}"]) for k in (*STEP_INPUTS, "reset")}
    y = jnp.asarray(gold["step_out/coarse_feat"])

    @jax.jit
    def coarse(p, x, y):
        keep = 1.0 - x["reset"][:, None]  # the reset of row 1, as in the observe step
        ez, ea = agent.rssm.apply({"params": p}, x["stoch"] * keep[..., None], x["action"] * keep, method=td.RSSM.embed_za)
        c = our_step(agent, p, x)["context"]
        return agent.coarse_prior({"rssm": p}, y, ez, ea), agent.coarse_prior({"rssm": p}, c, ez, ea)

    from_y, ours = coarse(p, x, y)
    assert_close("coarse logits from y", from_y, gold["step_out/coarse_logit"])
    assert rel_err(ours, gold["step_out/coarse_logit"]) > 1e-2


# ======================================================================================================================
# World-model loss terms of the C-RSSM
# ======================================================================================================================


def test_kl_terms_and_sparsity_loss(gold, agent):
    """CRSSM.loss of THIX (dreamerv3/nets/crssm.py): dyn = max(1, KL[sg q || p]), rep = max(1, KL[q || sg p]), the same
    against the coarse prior, and sparse_b = max(sum_t mean_i Theta, sparse_free) / T; combined as ThickAgent.loss does
    (sum of mean(scale * term)). Ours: the same expressions of Agent.loss with categorical_kl and sparse_loss."""
    args, p = agent.args, our_params(gold, agent)
    x = {k: jnp.asarray(gold[f"loss_in/{k}"]) for k in ("deter", "context", "logit", "coarse_logit", "coarse_gates")}
    scales = {
        "dyn": args.dyn_scale,
        "rep": args.rep_scale,
        "coarse_dyn": 1.0,
        "coarse_rep": args.coarse_rep_scale,
        "sparse": args.sparse_scale,
    }
    ref_scales = dict(zip(sorted(scales), gold["loss_in/scales"].tolist(), strict=True))  # written in sorted key order
    assert scales == pytest.approx(ref_scales)  # our defaults are THIX's `thick` loss_scales

    def terms(p, x):
        prior = agent.prior({"rssm": p}, x["deter"], x["context"])
        post, cprior, sg = x["logit"], x["coarse_logit"], jax.lax.stop_gradient
        return {
            "dyn": jnp.maximum(args.free_nats, td.categorical_kl(sg(post), prior)),
            "rep": jnp.maximum(args.free_nats, td.categorical_kl(post, sg(prior))),
            "coarse_dyn": jnp.maximum(args.free_nats, td.categorical_kl(sg(post), cprior)),
            "coarse_rep": jnp.maximum(args.free_nats, td.categorical_kl(post, sg(cprior))),
            "sparse": td.sparse_loss(x["coarse_gates"], args.sparse_free),
        }

    out = jax.jit(terms)(p, x)
    for k in ("dyn", "rep", "coarse_dyn", "coarse_rep"):
        assert_close(k, out[k], gold[f"loss_out/{k}"])
        assert 0 < (gold[f"loss_out/{k}"] == 1.0).mean() < 1  # some steps clipped at the free nat, some not
    ref_sparse = gold["loss_out/sparse"]  # (B,): one value per sequence, averaged over the batch in the total
    assert_close("sparse", out["sparse"], ref_sparse.mean())
    assert ref_sparse[0] == ref_sparse[1] == 1.0 / 10 and ref_sparse[2] > 0.1  # rows 0, 1 under the hinge, row 2 above
    total = lambda p, x: sum(jnp.mean(scales[k] * v) for k, v in terms(p, x).items())
    gp, gx = jax.jit(jax.grad(total, argnums=(0, 1)))(p, x)
    for ref, ours in PARAM_MAP.items():
        if "/img" in ref:
            assert_close(f"grad {ref}", get(gp, ours), gold[f"grad_loss/param/{ref}"])
    for k in x:
        assert_close(f"grad {k}", gx[k], gold[f"grad_loss/in/{k}"])


# ======================================================================================================================
# High-level target extraction
# ======================================================================================================================


@pytest.fixture(scope="module")
def tg_gold():
    with np.load(DATA / "parity_thick_targets.npz") as f:
        return dict(f)


def our_targets(g, ev, action):
    B, T = g["in/reward"].shape
    gamma = 1.0 - 1.0 / int(g["in/horizon"])  # Agent.gamma: THIX's discount 1 - 1/horizon
    inputs = (ev, g["in/is_first"], g["in/logit"], g["in/stoch"].reshape(B, T, -1), g["in/context"], action, g["in/reward"])
    return jax.tree.map(np.asarray, td.extract_targets(*map(jnp.asarray, inputs), gamma))


def events(g):
    """ev_t = (context changed at t) | is_terminal_t, two ways: THIX's (c_t != c_{t-1}, jnp.diff of the context in
    high_level_world_model.py generate_high_level_world_model_training_targets) and ours (any gate open at t)."""
    term = g["in/is_terminal"]
    diff = np.concatenate([np.zeros_like(term[:, :1]), np.any(np.diff(g["in/context"], axis=1) != 0, -1)], 1)
    gate = np.any(g["in/gates"] > 0, -1)
    return diff | term, gate | term


def test_high_level_targets_match_thix(tg_gold):
    """Targets for each t with tau = the next event in (t, T) and no is_first in (t, tau]: z = posterior logits at
    tau - 1, a = a_{tau - 1}, delta = tau - 1 - t, R = sum_{j=t+1}^{tau} gamma^(j-t-1) r_j, c_next = c_tau (THIX:
    high_level_world_model.py generate_high_level_world_model_training_targets, get_action_posterior_future_inputs)."""
    g = tg_gold
    ev_diff, _ = events(g)
    n_act = g["out_disc/action"].shape[-1]
    ours = our_targets(g, ev_diff, np.eye(n_act, dtype=np.float32)[g["in/action_disc"]])  # THIX's event definition
    mask = g["out/mask"]
    np.testing.assert_array_equal(ours["mask"], mask.astype(np.float32))
    assert 0.3 < mask.mean() < 0.9 and not mask[3].any()  # valid and invalid targets; row 3 has no event at all
    m = mask.astype(bool)
    np.testing.assert_array_equal(ours["delta"][m], g["out/t_delta"][m])
    np.testing.assert_array_equal(ours["z"][m], g["out/logit"][m])
    np.testing.assert_array_equal(ours["a"][m], g["out_disc/action"][m])
    np.testing.assert_array_equal(ours["c_next"][m], g["out/context_next"][m])
    assert_close("R", ours["R"][m], g["out/reward"][m])
    cont = our_targets(g, ev_diff, g["in/action_cont"])  # continuous actions: a_{tau-1} as it is
    np.testing.assert_array_equal(cont["a"][m], g["out_cont/action"][m])
    # invalid entries: ours are zeros; THIX's are placeholders (0, or a negative delta) that its mask removes
    assert not np.any(ours["delta"][~m]) and not np.any(ours["R"][~m]) and np.all(g["out/t_delta"][~m] < 0)


def test_high_level_posterior_input_documented_difference(tg_gold):
    """Deliberate difference: the posterior over the high-level action sees (c_tau, z_{tau-1}) in ours (the sampled
    posterior state before the change, as the TF original CognitiveModeling/THICK@934980a), (c_tau, logits_tau) in
    THIX (get_action_posterior_future_inputs). c_tau agrees; the z input is taken one step earlier and is a sample."""
    g = tg_gold
    ev_diff, _ = events(g)
    ours = our_targets(g, ev_diff, g["in/action_cont"])
    B, T = g["in/reward"].shape
    m = g["out/mask"].astype(bool)
    b, t = np.nonzero(m)
    tau = t + g["out/t_delta"][b, t] + 1
    np.testing.assert_array_equal(g["out/context_next"][b, t], g["in/context"][b, tau])
    np.testing.assert_array_equal(g["out/logit_next"][b, t], g["in/logit"][b, tau])  # THIX: logits at tau
    np.testing.assert_array_equal(ours["z_prev"][b, t], g["in/stoch"].reshape(B, T, -1)[b, tau - 1])  # ours: z_{tau-1}


def test_change_detection_by_gates_documented_difference(tg_gold):
    """Deliberate difference: ours detects a change where any gate opens (Theta), THIX where the context differs
    (jnp.diff). They agree unless a gate opens with a change below float32 resolution: row 4 of the goldens has such a
    gate at t = 5, which makes t = 5 an event for us (t = 3, 4 get tau = 5) and not for THIX (tau = 8)."""
    g = tg_gold
    ev_diff, ev_gate = events(g)
    assert np.argwhere(ev_diff[:, 1:] != ev_gate[:, 1:]).tolist() == [[4, 4]]  # t = 5 (ev_0 is never used: j > t)
    act = g["in/action_cont"]
    a, b = our_targets(g, ev_diff, act), our_targets(g, ev_gate, act)
    differs = np.argwhere(a["delta"] != b["delta"]).tolist()
    assert differs == [[4, 3], [4, 4]]
    assert b["delta"][4, 3:5].tolist() == [1, 0] and g["out/t_delta"][4, 3:5].tolist() == [4, 3]
    for k in ("mask", "z", "a", "c_next", "z_prev", "R"):  # everything else is the same
        keep = np.ones(a[k].shape[:2], bool)
        keep[4, 3:5] = False
        np.testing.assert_array_equal(a[k][keep], b[k][keep])


# ======================================================================================================================
# THICK Dreamer critic target (TensorFlow original only)
# ======================================================================================================================


def test_critic_target_against_the_tensorflow_original():
    """CognitiveModeling/THICK:thick/agent.py@934980a, ActorCritic.thick_dreamer_target:
        full_target = critic_psi * target + (1 - critic_psi) * hl_target      (critic_psi = 0.9 in thick/configs.yaml)
    with hl_target from CognitiveModeling/THICK:thick/common/other.py@934980a, long_term_return:
        hl_target = inter_reward + inter_discount * (reward + pcont * value),  inter_discount = disc^delta_time,
        delta_time = clip(Delta_hat, 0, maxlen) + 1  (thick/agent.py, WorldModel.thick_imagine).
    Hand-computed for psi = 0.9, ret = (2, -1, 0.5), inter_reward R = (1, 0, 3), Delta_hat = (0, 2, 1), disc = pcont
    d = (0.5, 1, 0.8), reward r_c = (0.5, 0, -1), value v_c = (4, 2, 10):
        hl_target = (1 + 0.5^1 (0.5 + 0.5 * 4), 0 + 1^3 (0 + 2), 3 + 0.8^2 (-1 + 0.8 * 10)) = (2.25, 2, 7.48)
        full      = (1.8 + 0.225, -0.9 + 0.2, 0.45 + 0.748)                                = (2.025, -0.7, 1.198)"""
    ret = jnp.array([2.0, -1.0, 0.5])
    tf_v_long = jnp.array([2.25, 2.0, 7.48])
    assert td.Args().psi == 0.9  # = critic_psi of the original
    target, fallback = td.mixed_target(ret, tf_v_long, 0.9, jnp.float32(5.0))
    np.testing.assert_allclose(target, [2.025, -0.7, 1.198], rtol=1e-6)
    assert not fallback
    # documented difference 1: a batch without change events (mask sum 0) falls back to psi = 1 (the original has no
    # such guard; its high-level heads would then be untrained)
    target, fallback = td.mixed_target(ret, tf_v_long, 0.9, jnp.float32(0.0))
    np.testing.assert_array_equal(target, ret)
    assert fallback


def test_long_value_documented_difference_to_the_tensorflow_original():
    """Deliberate difference (DreamerV3 conventions): ours V_long = R + gamma^Delta_hat * con_c * v_c with
    R = sum_{j=t+1}^{tau} gamma^(j-t-1) r_j (it already holds r_tau) and con_c ~ gamma * cont at tau, so v_c (which
    excludes the reward of its state) gets gamma^(tau - t) in all. The original's long_term_return (thick/common/other.py
    @934980a) adds the coarse reward at tau again and discounts with d^(Delta_hat + 1) * d, one step more; its V2 critic
    includes the reward of its state. Ours is long_term_return with reward = 0, pcont = con_c and inter_discount =
    gamma^Delta_hat; with the original's arguments (numbers of the test above, gamma = 0.5) the two differ by
    d^(Delta_hat + 1) r_c + (d^(Delta_hat + 1) - gamma^Delta_hat) d v_c, by hand:
        ours = (1 + 0.5^0 * 0.5 * 4, 0 + 0.5^2 * 1 * 2, 3 + 0.5^1 * 0.8 * 10) = (3, 0.5, 7)
        diff = (0.25 - 1, 0 + 1.5, -0.64 + 1.12) = (-0.75, 1.5, 0.48) = (2.25, 2, 7.48) - (3, 0.5, 7)"""
    R, delta, d, r_c, v_c = (
        jnp.array(v) for v in ([1.0, 0.0, 3.0], [0.0, 2.0, 1.0], [0.5, 1.0, 0.8], [0.5, 0.0, -1.0], [4.0, 2.0, 10.0])
    )
    ours = td.long_value(R, delta, d, v_c, 0.5)
    np.testing.assert_allclose(ours, [3.0, 0.5, 7.0], rtol=1e-6)
    tf_long_term_return = lambda reward, value, pcont, inter_reward, inter_discount: (
        inter_reward + inter_discount * (reward + pcont * value)
    )  # the formula, as in thick/common/other.py
    np.testing.assert_allclose(ours, tf_long_term_return(0.0, v_c, d, R, 0.5**delta), rtol=1e-6)
    tf = tf_long_term_return(r_c, v_c, d, R, d ** (delta + 1))
    np.testing.assert_allclose(tf, [2.25, 2.0, 7.48], rtol=1e-6)
    np.testing.assert_allclose(tf - ours, [-0.75, 1.5, 0.48], rtol=1e-5)
