"""Numerical parity of hieros_s5_torch.py with the original HIEROS code, Snagnar/Hieros@ab4c593 (no reference code needed).

The golden files tests/data/parity_hieros_*.npz hold inputs, the reference's parameters (in its own names) and its
outputs; benchmark/parity/hieros_reference.py writes them from a checkout of the reference (see its --help). Each test
maps the reference's parameter names onto ours with an explicit table, runs this project's code on the same inputs and
compares. Randomness is never matched: the world model's posterior samples are an input on both sides, every other
categorical is taken at its mode, and the ETBS uniform draws are an input.

Tolerances: float32, about 1e-5 relative (atol 1e-5 where values cross 0), unless a test says why it needs more.
Where hieros_s5_torch.py deliberately differs from the original (a fixed bug or a decided quirk), the test checks
that the difference is exactly that: with the flag that restores the original behaviour the numbers match, and by
default they differ (see each test's docstring).
"""

import contextlib
import importlib
import os

import numpy as np
import pytest
import torch

h = importlib.import_module("hieros_s5_torch")
torch.set_num_threads(1)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# the small sizes of benchmark/parity/hieros_reference.py
CFG = dict(stoch=4, classes=4, deter=16, hidden=16, s5_width=16, s5_state=8, s5_init_blocks=2, s5_blocks=2, cnn_depth=4,
           mlp_units=32, mlp_layers=2, head_units=32, head_layers=2)  # fmt: skip
OBS, ACT = 5, 3
RTOL, ATOL = 1e-5, 1e-5


def gold(name):
    with np.load(os.path.join(DATA, f"parity_hieros_{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def close(ours, ref, rtol=RTOL, atol=ATOL, msg=""):
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    np.testing.assert_allclose(ours, np.asarray(ref).reshape(ours.shape), rtol=rtol, atol=atol, err_msg=msg)


# ----------------------------------------------------------------------------------------------------------------------
# Parameter-name tables: our name (prefix) -> the reference's name (prefix), and how the tensor is rearranged
# ----------------------------------------------------------------------------------------------------------------------

# One SSM: hieros_s5_torch.S5SSM <- resettable_s5.S5 (its S5SSM is `seq`). The reference stores complex Lambda and C;
# we store real and imaginary parts (Lambda as two vectors, C as a trailing axis of 2, like B in both).
SSM_TABLE = [
    ("lambda_re", "seq.Lambda", np.real),
    ("lambda_im", "seq.Lambda", np.imag),
    ("B", "seq.B", None),  # (P, H, 2): real and imaginary part of B_tilde in both
    ("C", "seq.C", lambda c: np.stack([c.real, c.imag], -1)),  # (H, P) complex -> (H, P, 2)
    ("D", "seq.D", None),
    ("log_step", "seq.log_step", None),
]
# One double block: hieros_s5_torch.DoubleS5Block <- resettable_s5.ReworkedDoubleS5Block (ff_layers 0, attn_linear)
BLOCK_TABLE = [("ssm1.", "s5_1."), ("ssm2.", "s5_2."), ("ln1.", "attn_norm_1."), ("ln2.", "attn_norm_2."),
               ("ln3.", "attn_norm_3."), ("w1.", "linear_1."), ("w2.", "linear_2.")]  # fmt: skip
# The S5 world model's dynamics: hieros_s5_torch.S5WM <- networks.Seq2SeqDynamics. Our small MLPs are nn.Sequential
# [Linear, LayerNorm, act, ..., Linear]; the reference splits off the output Linear (_ims_stat_layer, _obs_stat_layer).
DYN_TABLE = [("inp.", "_inp_layers."), ("seq_out.", "_seq_output."), ("state_out.", "_state_out."),
             ("img_out.0.", "_img_out_layers.0."), ("img_out.1.", "_img_out_layers.1."), ("img_out.3.", "_ims_stat_layer."),
             ("obs_out.0.", "_obs_out_layers.0."), ("obs_out.1.", "_obs_out_layers.1."), ("obs_out.3.", "_obs_stat_layer."),
             ("init_w", "W")] + [(f"stack.blocks.{i}.{ours}", f"_seq_model.{i}.{ref}")
                                 for i in range(CFG["s5_blocks"]) for ours, ref in BLOCK_TABLE]  # fmt: skip
# The whole world model: S5WM <- models.WorldModel (dynamics + encoder + heads), vector observations, 2-layer MLPs
WM_TABLE = [(ours, "dynamics." + ref) for ours, ref in DYN_TABLE] + [
    ("encoder.net.", "encoder._mlp.layers."),  # symlog inputs -> 2 x [Linear, LN, SiLU]
    ("decoder.net.6.", "heads.decoder._mlp.mean_layer.vector."), ("decoder.net.", "heads.decoder._mlp.layers."),
    ("reward.6.", "heads.reward.mean_layer."), ("reward.", "heads.reward.layers."),
    ("cont.6.", "heads.cont.mean_layer."), ("cont.", "heads.cont.layers."),
]  # fmt: skip
# Image observations: the CNN encoder / decoder <- networks.ConvEncoder / ConvDecoder (4 stride-2 k4 convs, channel
# LayerNorm + SiLU). The decoder's first Linear outputs (4, 4, C) in the reference (channels last) and (C, 4, 4) here:
# the same rows, permuted.
def channels_first(x, c=8 * 2):  # (4 * 4 * C, ...) rows ordered (h, w, c) -> ordered (c, h, w); C = 8 x depth 2
    return np.moveaxis(x.reshape(4, 4, c, *x.shape[1:]), 2, 0).reshape(x.shape)


WM_IMAGE_TABLE = [entry for entry in WM_TABLE if not entry[0].startswith(("encoder.", "decoder."))] + [
    *[(f"encoder.net.{i}.ln.", f"encoder._cnn.layers.{i}.norm.") for i in (1, 4, 7, 10)],
    ("encoder.net.", "encoder._cnn.layers."),
    ("decoder.inp.", "heads.decoder._cnn._linear_layer.", channels_first),
    *[(f"decoder.net.{i}.ln.", f"heads.decoder._cnn.layers.{i}.norm.") for i in (1, 4, 7)],
    ("decoder.net.", "heads.decoder._cnn.layers."),
]  # fmt: skip
# The subgoal autoencoder: SubgoalAutoencoder <- models.SubgoalAutoencoder. Our decoder ends in one more plain Linear
# (dec.9; the original's output is its last LN + GELU, bounded below by -0.17): it has no reference counterpart and
# is set to the identity, which makes our decoder the original's exactly.
AE_TABLE = [("enc.", "_encoder.layers."), ("dec.", "_decoder.layers.")]
AE_IDENTITY = "dec.9."
# Actor and critics of a level: Level.actor / critics / slow_critics <- models.ImagBehavior (networks.ActionHead and
# networks.MLP; their output Linear is _dist_layer / mean_layer). One critic, and one slow copy, per reward head.
HEADS = ("extrinsic", "subgoal", "novelty")
BEHAVIOR_TABLE = [("actor.net.6.", "actor._dist_layer."), ("actor.net.", "actor._pre_layers.")] + [
    entry for head in HEADS for entry in (
        (f"critics.{head}.6.", f"_value_heads.{head}.mean_layer."), (f"critics.{head}.", f"_value_heads.{head}.layers."),
        (f"slow_critics.{head}.6.", f"_slow_values.{head}.mean_layer."),
        (f"slow_critics.{head}.", f"_slow_values.{head}.layers."))
]  # fmt: skip


def ref_name(ours, table):
    """Rewrite our parameter name with the longest matching prefix of `table` (an entry may carry a rearrangement of
    the tensor), then the SSM leaf names. Returns (reference name, rearrangement or None)."""
    best = max((p for p in table if ours.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    name = ours if best is None else best[1] + ours[len(best[0]) :]
    for leaf, ref_leaf, fn in SSM_TABLE:
        if name.endswith("." + leaf) or name == leaf:
            return name[: len(name) - len(leaf)] + ref_leaf, fn
    return name, (best[2] if best is not None and len(best) > 2 else None)


def load(module, g, prefix, table, skip=(), only=None):
    """Set every parameter of `module` from the golden parameters `prefix/param/<reference name>`; every reference
    parameter must be used and every one of ours set (except `skip`, and those not under `only` when given)."""
    used = set()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(tuple(skip)) or (only is not None and not name.startswith(tuple(only))):
                continue
            ref, fn = ref_name(name, table)
            key = f"{prefix}/param/{ref}"
            assert key in g, f"{name}: no reference parameter {ref}"
            value = g[key] if fn is None else fn(g[key])
            p.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(p.shape))  # init W: (1, D) -> (D,)
            used.add(key)
    unused = {k for k in g if k.startswith(f"{prefix}/param/")} - used
    assert not unused, f"reference parameters without a counterpart: {sorted(unused)}"


def args(**kw):
    return h.Args(model_size="debug", dropout=0.0, **kw)


def make_wm(**kw):
    return h.S5WM((OBS,), False, ACT, CFG, args(**kw), CFG["mlp_units"])


# ----------------------------------------------------------------------------------------------------------------------
# S5: layer, double block, HiPPO init (resettable_s5/s5_model.py, resettable_s5/init.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_hippo_init_lambda():
    """Lambda at init: HiPPO-LegS (normal part) solved at P/J and tiled J times, all P eigenvalues kept."""
    g = gold("s5")
    lam, _ = h.hippo_init(CFG["s5_state"], CFG["s5_init_blocks"])
    close(lam.real, g["s5/init_Lambda"].real)
    close(lam.imag, g["s5/init_Lambda"].imag)


def recurrent(step, u, reset, state):
    """Run `step` over time, the state zeroed at every reset (then x_t = B_bar u_t, as the resettable scan)."""
    ys, xs = [], []
    for k in range(u.shape[1]):
        state = torch.where(torch.as_tensor(reset[:, k])[:, None], torch.zeros_like(state), state)
        y, state = step(u[:, k], state)
        ys.append(y), xs.append(state)
    return torch.stack(ys, 1), torch.stack(xs, 1)


def test_s5_layer_parallel_and_recurrent():
    """S5 with resets: outputs y and all states x of the parallel scan and of the recurrent step. The scans differ
    (Hillis-Steele doubling here, the recursive odd/even scan of jax_compat there), so the parallel outputs agree to
    float32 rounding of |Lambda_bar| ~ 1 products over 11 steps (rtol 1e-5, atol 1e-5 on values of order 1)."""
    g = gold("s5")
    ssm = h.S5SSM(CFG["s5_width"], CFG["s5_state"], CFG["s5_init_blocks"])
    load(ssm, g, "s5", [])
    u, reset = torch.as_tensor(g["s5/in/u"]), torch.as_tensor(g["s5/in/reset"])
    with torch.no_grad():
        y, x = ssm(u, reset)
        x0 = torch.zeros(u.shape[0], CFG["s5_state"], dtype=torch.complex64)
        y_step, x_step = recurrent(ssm.step, u, g["s5/in/reset"], x0)
    close(y, g["s5/out/y"])
    close(torch.view_as_real(x), np.stack([g["s5/out/x"].real, g["s5/out/x"].imag], -1))
    close(y_step, g["s5/out/y_step"])
    close(torch.view_as_real(x_step), np.stack([g["s5/out/x_step"].real, g["s5/out/x_step"].imag], -1))


def test_double_block_parallel_and_recurrent():
    """ReworkedDoubleS5Block (pre-LN, two SSMs, W1/W2 + GELU, out = x + LN3(x)) with resets, parallel and recurrent;
    the block state is both SSMs' states (2P)."""
    g = gold("s5")
    blk = h.DoubleS5Block(CFG["s5_width"], CFG["s5_state"], CFG["s5_init_blocks"], 0.0).eval()
    load(blk, g, "block", BLOCK_TABLE)
    u, reset = torch.as_tensor(g["block/in/u"]), torch.as_tensor(g["block/in/reset"])
    with torch.no_grad():
        y, x = blk(u, reset)
        x0 = torch.zeros(u.shape[0], 2 * CFG["s5_state"], dtype=torch.complex64)
        y_step, x_step = recurrent(blk.step, u, g["block/in/reset"], x0)
    for ours, key in ((y, "y"), (y_step, "y_step")):
        close(ours, g[f"block/out/{key}"], msg=key)
    for ours, key in ((x, "x"), (x_step, "x_step")):
        close(torch.view_as_real(ours), np.stack([g[f"block/out/{key}"].real, g[f"block/out/{key}"].imag], -1), msg=key)


# ----------------------------------------------------------------------------------------------------------------------
# S5WM: one recurrent step (hieros/networks.py Seq2SeqDynamics)
# ----------------------------------------------------------------------------------------------------------------------


def test_wm_step_initial_obs_step_img_step():
    """The learned initial state (h = GELU(W), z = mode of the prior), obs_step with episode starts in the batch
    (the state and previous action reset there), the posterior from the embedding only, and img_step."""
    g = gold("s5")
    wm = make_wm().eval()
    load(wm, g, "wmstep", DYN_TABLE, skip=("encoder.", "decoder.", "reward.", "cont."))
    n = g["wmstep/in/deter"].shape[0]
    state = {"z": torch.as_tensor(g["wmstep/in/stoch"]).flatten(1), "h": torch.as_tensor(g["wmstep/in/deter"]),
             "x": torch.as_tensor(g["wmstep/in/state"])}  # fmt: skip
    action, embed = torch.as_tensor(g["wmstep/in/action"]), torch.as_tensor(g["wmstep/in/embed"])
    is_first = torch.as_tensor(g["wmstep/in/is_first"])
    with torch.no_grad():
        init = wm.initial(n)
        close(init["z"], g["wmstep/out/init_stoch"].reshape(n, -1))
        close(init["h"], g["wmstep/out/init_deter"])
        post_z = wm.post(embed, sample=False)[1]
        close(post_z, g["wmstep/out/post_stoch"].reshape(n, -1))
        post, post_logits, prior_logits = wm.obs_step(state, action, embed, is_first, z=post_z)
        close(post_logits, g["wmstep/out/post_logit"])
        close(prior_logits, g["wmstep/out/prior_logit"])
        close(post["h"], g["wmstep/out/deter"])
        close(torch.view_as_real(post["x"]), np.stack([g["wmstep/out/state"].real, g["wmstep/out/state"].imag], -1))
        prior, logits = wm.img_step(state, action, sample=False)
        close(logits, g["wmstep/out/img_logit"])
        close(prior["z"], g["wmstep/out/img_stoch"].reshape(n, -1))
        close(prior["h"], g["wmstep/out/img_deter"])
        close(torch.view_as_real(prior["x"]), np.stack([g["wmstep/out/img_state"].real, g["wmstep/out/img_state"].imag], -1))


# ----------------------------------------------------------------------------------------------------------------------
# World-model loss (hieros/models.py WorldModel._train) and its gradients
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def injected_posterior(monkeypatch, injected, original_mode_gradient=False):
    """Our categorical sampler returns the injected one-hot posterior sample (with the straight-through term
    probs - sg(probs), as the reference's OneHotDist.sample). original_mode_gradient: the mode (z_init of the learned
    initial state) takes its straight-through gradient through log-probabilities, as the reference's OneHotDist.mode
    (onehot + logits - sg(logits)); ours takes it through probabilities."""
    real = h.onehot_straight_through

    def fake(probs, sample=True):
        if sample:
            assert probs.shape == injected.shape, (probs.shape, injected.shape)
            return injected + (probs - probs.detach())
        if original_mode_gradient:
            onehot = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
            return onehot + (probs.log() - probs.log().detach())
        return real(probs, sample)

    monkeypatch.setattr(h, "onehot_straight_through", fake)
    yield
    monkeypatch.setattr(h, "onehot_straight_through", real)


def our_wm_loss(g, monkeypatch, action_shift, original_mode_gradient=False):
    """Our world-model loss terms (named as the reference's metrics) and gradients on the golden batch."""
    a = args(action_shift=action_shift)
    wm = make_wm(action_shift=action_shift).train()  # training mode, as WorldModel._train (dropout 0 on both sides)
    load(wm, g, "wm", WM_TABLE)
    t = {k: torch.as_tensor(g[f"wm/in/{k}"]) for k in ("vector", "action", "reward", "is_first", "is_terminal")}
    with injected_posterior(monkeypatch, torch.as_tensor(g["wm/in/post_sample"]), original_mode_gradient):
        loss, _, _, m = h.wm_loss(wm, t["vector"], t["action"], t["reward"], t["is_first"], t["is_terminal"].float(), a)
        with torch.no_grad():  # the clipped KL means (the reference's dyn_loss / rep_loss) from our per-sample KLs
            _, post_logits, prior_logits = wm.observe(wm.encoder(t["vector"]), t["action"], t["is_first"])
            _, dyn, rep = h.kl_loss(post_logits, prior_logits, a.free_nats, a.kl_dyn_scale, a.kl_rep_scale)
    loss.backward()
    terms = {"vector_loss": m["wm_recon"], "reward_loss": m["wm_reward"], "cont_loss": m["wm_cont"],
             "dyn_loss": dyn.clamp(min=a.free_nats).mean(), "rep_loss": rep.clamp(min=a.free_nats).mean(),
             "kl": m["wm_kl_rep"], "model_loss": loss}  # fmt: skip
    return {k: float(v.detach()) for k, v in terms.items()}, dict(wm.named_parameters())


def check_grads(params, g, tag, names, prefix="wm", table=WM_TABLE, tol=1e-4):
    """The gradient of each parameter in `names` (ours) against the reference's, through the name table (complex
    reference gradients d/dRe + i d/dIm, split as the parameters). Each tensor within `tol` (1e-4) of its largest
    entry: a gradient sums B x T = 24 steps of float32 terms through two S5 blocks (measured: 1.2e-5 at most)."""
    for name in names:
        ref, fn = ref_name(name, table)
        ref = g[f"{prefix}/grad_{tag}/{ref}"]
        ref = np.asarray(ref if fn is None else fn(ref), np.float32).reshape(params[name].shape)
        ours = params[name].grad.numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * max(np.abs(ref).max(), 1e-8), err_msg=name)


MODE_PATH = ("init_w", "img_out.")  # parameters upstream of z_init = mode(prior(GELU(W))): reference W, prior head


@pytest.mark.parametrize("action_shift", [False, True])
def test_world_model_loss_terms_and_gradients(monkeypatch, action_shift):
    """Every loss term of WorldModel._train (symlog-MSE vector reconstruction, two-hot reward, Bernoulli continue,
    dyn / rep KL with free bits 1.0 clipped per sample, their 0.5 / 0.1 mix) on a batch with episode starts inside
    the rows and terminals, with the posterior sample injected, and the gradient of every parameter.

    Fixed bug, action alignment: the original feeds the action stored with o_t (chosen after seeing o_t) as the S5
    input at t; we feed a_{t-1}. With --no-action-shift the numbers are the original's; by default they are the
    original's fed with the actions shifted by one step (a_{t-1}, 0 at the first step), and differ from its own.
    Deliberate difference, straight-through gradient of the learned initial state's z_init = mode(prior(GELU(W))): the
    original's goes through log-probabilities (tools.OneHotDist.mode), ours through probabilities (as every sample of
    both), so the gradients of W and of the prior head (img_out) differ, and match when the test takes ours through
    log-probabilities too. All other gradients match."""
    g = gold("wm")
    match, other = ("shift", "orig") if action_shift else ("orig", "shift")
    terms, params = our_wm_loss(g, monkeypatch, action_shift)
    for k, v in terms.items():
        close(v, g[f"wm/out_{match}/{k}"], msg=k)
    assert abs(terms["model_loss"] - g[f"wm/out_{other}/model_loss"].item()) > 1e-3  # the alignment matters here
    check_grads(params, g, match, [n for n in params if not n.startswith(MODE_PATH)])
    with pytest.raises(AssertionError):  # z_init's straight-through gradient: through probabilities here
        check_grads(params, g, match, ["init_w"])
    _, params_st = our_wm_loss(g, monkeypatch, action_shift, original_mode_gradient=True)
    check_grads(params_st, g, match, list(params_st))  # through log-probabilities as the original: every gradient


def test_world_model_loss_on_images(monkeypatch):
    """The same on 64 x 64 x 3 uint8 images (pixels / 255 - 0.5): the CNN encoder and decoder (depth 2 here), the MSE
    summed over pixels, every other term, and the gradients of the encoder and decoder (actions as stored, so
    --no-action-shift; the rest is the vector case above). Gradient tolerance 5e-4 of each tensor's largest entry:
    the first channel LayerNorm normalises 2 channels, and its scale's gradient sums 6 x 32 x 32 pixel terms whose
    absolute sum is 300-500 times the result, so float32 rounding of the terms shows at ~1e-4 (measured: 7.1e-5)."""
    g = gold("wm_image")
    a = args(action_shift=False)
    cfg = {**CFG, "cnn_depth": 2}
    wm = h.S5WM((64, 64, 3), True, ACT, cfg, a, cfg["mlp_units"]).train()
    load(wm, g, "wm_image", WM_IMAGE_TABLE)
    t = {k: torch.as_tensor(g[f"wm_image/in/{k}"]) for k in ("image", "action", "reward", "is_first", "is_terminal")}
    with injected_posterior(monkeypatch, torch.as_tensor(g["wm_image/in/post_sample"])):
        loss, _, _, m = h.wm_loss(wm, t["image"], t["action"], t["reward"], t["is_first"], t["is_terminal"].float(), a)
    loss.backward()
    for ours, ref in (("wm_recon", "image_loss"), ("wm_reward", "reward_loss"), ("wm_cont", "cont_loss"),
                      ("wm_kl_rep", "kl"), ("wm_loss", "model_loss")):  # fmt: skip
        close(m[ours], g[f"wm_image/out_orig/{ref}"], msg=ref)
    params = dict(wm.named_parameters())
    names = [n for n in params if n.startswith(("encoder.", "decoder."))]
    check_grads(params, g, "orig", names, "wm_image", WM_IMAGE_TABLE, tol=5e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Subgoals: autoencoder (hieros/models.py SubgoalAutoencoder), subgoal and novelty rewards (hieros/hieros.py SubActor)
# ----------------------------------------------------------------------------------------------------------------------


def make_ae(g):
    """Our autoencoder with the reference's parameters, the extra output Linear of our decoder set to the identity."""
    ae = h.SubgoalAutoencoder(CFG["deter"]).eval()
    load(ae, g, "ae", AE_TABLE, skip=(AE_IDENTITY,))
    with torch.no_grad():
        ae.dec[9].weight.copy_(torch.eye(CFG["deter"]))
        ae.dec[9].bias.zero_()
    return ae


def test_subgoal_autoencoder():
    """symlog(h) -> 3 x [Linear, LN, GELU] -> 8 x 8 logits -> one-hot mode (unimix 1 %) -> 3 x [Linear, LN, GELU]; the
    loss terms mean (g^ - symlog h)^2 and mean_factors KL(code dist || uniform(8)).
    Decided difference: our decoder ends in one more plain Linear (the original's output, its last LN + GELU, is
    bounded below by -0.17 while its target symlog(h) is not); with that layer at the identity it is the original's."""
    g = gold("subgoal")
    ae = make_ae(g)
    x = torch.as_tensor(g["ae/in/h"])
    with torch.no_grad():
        code, probs = ae.encode(x)
        close(ae.enc(h.symlog(x)).reshape(-1, 8, 8), g["ae/out/logits"])
        close(code, g["ae/out/code"].reshape(code.shape))
        close(ae.decode(code), g["ae/out/decoded"])
        rec, _ = ae.loss(x, kl_scale=0.0)
        both, _ = ae.loss(x, kl_scale=0.5)
    close(rec, g["ae/out/rec_loss"])
    close((both - rec) / 0.5, g["ae/out/kl_loss"], rtol=1e-4)  # a difference of two O(1) float32 values, divided by 0.5


def test_subgoal_and_novelty_rewards():
    """Subgoal reward: symlog(max(0, g^ . symlog(h) / max(|g^|, |symlog h|)^2)) for imagined states (K, B*T, D) and the
    goal of each start state (B, T, D), incl. a reached goal (ln 2) and an opposite one (0).
    Novelty reward: symlog(mean_j (target_j - Dec(Enc(h))_j)^2). Decided difference: the original's target is the raw
    h, compared with a reconstruction trained towards symlog(h); ours is symlog(h). With the raw h as target (the only
    change) our autoencoder gives the original's numbers; ours differ."""
    g = gold("subgoal")
    ae = make_ae(g)
    deter, goal = torch.as_tensor(g["rewards/in/deter"]), torch.as_tensor(g["rewards/in/goal"])
    with torch.no_grad():
        r_goal = h.subgoal_reward(goal.flatten(0, 1)[None], deter)  # as train_level: the start state's goal, held
        close(r_goal, g["rewards/out/subgoal"])
        assert abs(float(r_goal[0, 0]) - np.log(2)) < 1e-6 and float(r_goal[0, 1]) == 0.0
        r_nov = h.novelty_reward(ae, deter)
        raw_target = h.symlog(((deter - ae.decode(ae.encode(deter)[0])) ** 2).mean(-1))
    close(raw_target, g["rewards/out/novelty"])
    assert np.abs(r_nov.numpy() - g["rewards/out/novelty"].reshape(r_nov.shape)).max() > 1e-2


# ----------------------------------------------------------------------------------------------------------------------
# ETBS (embodied/replay/selectors.py EfficientTimeBalanced)
# ----------------------------------------------------------------------------------------------------------------------


def etbs_cases(g):
    """(tag, N, M, tau) of every golden case: N in {1, 2, 10, 100, 1000}, M = N or the capacity 1e6, tau 0.3 or 1."""
    for tag in sorted({k.rsplit("/", 1)[0] for k in g if k.startswith("etbs/n")}):
        n, m, tau = tag.split("/")[1].split("_")
        yield tag, int(n[1:]), float(g[f"{tag}/m"]), float(tau[3:])


def test_etbs_index_and_probabilities():
    """The index drawn for the same uniform draw u (x = 2 + u N) is the original's exactly, and the exact pmf
    (hieros_s5_torch.etbs_pmf, bisection) matches the original's frequencies on a grid of 20000 draws to 2 / 20000
    (one grid point per interval boundary). M = N is our default; M = capacity (the original's wiring,
    --etbs-max-len capacity) is the same formula with the other scale: both match the original's selector built
    with that M."""
    g = gold("etbs")
    grid = int(g["etbs/grid"])
    for tag, n, m, tau in etbs_cases(g):
        np.testing.assert_array_equal(h.etbs_index(g[f"{tag}/u"], n, m, tau), g[f"{tag}/index"], err_msg=tag)
        np.testing.assert_allclose(h.etbs_pmf(n, m, tau), g[f"{tag}/pmf"], rtol=0, atol=2.0 / grid, err_msg=tag)


@pytest.mark.parametrize("max_len", ["current", "capacity"])
def test_etbs_replay_wiring(max_len):
    """SequenceReplay draws the key the original's selector picks for the same uniform draws: with M = the current
    number of keys by default, and with M = the capacity (1e6, as the original wires it) under --etbs-max-len capacity.
    Fixed bug (ETBS scale): the original's M = capacity leaves the oldest ~tau of the keys unsampled."""
    g = gold("etbs")
    n, t = 100, 4
    tag = f"etbs/n{n}_m{'n' if max_len == 'current' else 'cap'}_tau0.3"
    capacity = int(g[f"{tag}/m"]) if max_len == "capacity" else 10_000
    a = h.Args(replay="etbs", replay_temperature=0.3, etbs_max_len=max_len, buffer_size=capacity)
    replay = h.SequenceReplay(a.buffer_size, 1, t, {"obs": ((1,), np.float32), "is_first": ((), bool)}, a, seed=0)
    for step in range(n + t - 1):  # N keys: key k is the window starting at step k
        replay.add({"obs": np.array([[step]], np.float32), "is_first": np.array([step == 0])})
    assert len(replay) == n
    u = g[f"{tag}/u"]

    class Draws:
        def random(self, size):
            return u[:size]

    replay.rng = Draws()
    starts = replay.sample(len(u))["obs"][:, 0, 0].astype(np.int64)
    np.testing.assert_array_equal(starts, g[f"{tag}/index"])


# ----------------------------------------------------------------------------------------------------------------------
# Actor-critic of one level (hieros/models.py ImagBehavior._train: _compute_target, _compute_actor_loss, critic loss)
# ----------------------------------------------------------------------------------------------------------------------

BEHAVIOR_CFG = {**CFG, "head_units": 16}  # the narrower heads of the actor-critic golden


def our_behavior(g, **flags):
    """A middle level (3 heads, 8 x 8 code actor) with the reference's actor, critics and slow critics, on the
    golden imagined trajectory: (actor loss, per-head critic losses, level, features)."""
    a = h.Args(model_size="debug", max_hierarchy=3, **flags)
    level = h.Level(1, 3, (OBS,), False, "code", 64, BEHAVIOR_CFG, a)
    assert tuple(level.heads) == HEADS
    load(level, g, "behavior", BEHAVIOR_TABLE, only=("actor.", "critics.", "slow_critics."))
    load(level.wm, g, "behavior_wm", WM_TABLE, only=("reward.", "cont."))
    for head in HEADS:  # the return EMA's state before the update (5th, 95th percentile)
        level.retnorms[head].low.fill_(float(g[f"behavior/in/ema_{head}"][0]))
        level.retnorms[head].high.fill_(float(g[f"behavior/in/ema_{head}"][1]))
    k, n = g["behavior/in/deter"].shape[:2]
    code = torch.as_tensor(g["behavior/in/code"]).reshape(n, 64).expand(k, n, 64)  # the start state's code, held
    state = {"z": torch.as_tensor(g["behavior/in/stoch"]).flatten(-2), "h": torch.as_tensor(g["behavior/in/deter"])}
    with torch.no_grad():
        xs, _, _ = level.ac_input(state, torch.as_tensor(g["behavior/in/logit"]), code)  # (K, N, F + 64)
    rewards = {head: torch.as_tensor(g[f"behavior/in/reward_{head}"])[..., 0] for head in HEADS}
    cont = torch.as_tensor(g["behavior/in/cont"])[..., 0]
    # the reference's imag_horizon 6 is our 5: 6 states, 5 trained steps (it also samples an action at the last state)
    acts = torch.as_tensor(g["behavior/in/action"])[:-1]
    metrics = {}
    actor_loss, critic_loss = h.behavior_losses(level, xs, acts, rewards, cont, a, contextlib.nullcontext, metrics)
    actor_loss.backward()
    critic_loss.backward()  # the sum over heads: each critic receives its own head's gradient
    return float(actor_loss.detach()), {head: float(metrics[f"critic_{head}"]) for head in HEADS}, level, xs


ORIGINAL = dict(original_return_indexing=True, raw_advantage=True, factor_logprob_mean=True)


def test_actor_critic_losses_and_gradients():
    """One update of a middle level on an imagined trajectory (K = 6 states, 6 starts, all three reward heads, the
    8 x 8 code actor): the actor/critic features [z, h, symlog(r^), symlog(c^), symlog(H)] + code, the lambda-returns
    (gamma 0.997 c, lambda 0.95), the 5 / 95 % return EMA (from a given state), each head's critic loss (two-hot
    target + slow critic, weighted by the cumulative discount), the REINFORCE actor loss (entropy 3e-4), and their
    gradients.
    Three fixed bugs / decided quirks, each with its flag:
      --original-return-indexing  r(s_k), c(s_k) for the step s_k -> s_{k+1} (we: r, c of s_{k+1}, as DreamerV3)
      --raw-advantage             the unnormalised advantage (we: each head's divided by max(1, p95 - p5))
      --factor-logprob-mean       the code's log-prob / entropy averaged over the 8 factors (we: summed, the joint)
    With all three the numbers are the original's; without any one of them the actor loss differs, and without the
    indexing flag the critic losses differ. Gradients: each tensor within 1e-4 of its largest entry."""
    g = gold("behavior")
    actor, critics, level, xs = our_behavior(g, **ORIGINAL)
    close(xs[..., :-64], g["behavior/out/feat"])
    close(actor, g["behavior/out/actor_loss"])
    for head in HEADS:
        close(critics[head], g[f"behavior/out/critic_{head}_loss"], msg=head)
        close(level.retnorms[head].low, g[f"behavior/out/ema_low_{head}"], msg=head)
        close(level.retnorms[head].high, g[f"behavior/out/ema_high_{head}"], msg=head)
    for name, p in level.named_parameters():
        if name.startswith(("actor.", "critics.")):
            ref = g[f"behavior/grad/{ref_name(name, BEHAVIOR_TABLE)[0]}"].reshape(p.shape)
            np.testing.assert_allclose(p.grad.numpy(), ref, rtol=0, atol=1e-4 * max(np.abs(ref).max(), 1e-8), err_msg=name)
    for flag in ORIGINAL:  # each flag is needed
        actor_without, critics_without, _, _ = our_behavior(g, **{**ORIGINAL, flag: False})
        assert abs(actor_without - float(g["behavior/out/actor_loss"])) > 1e-4 * abs(actor), flag
        critic_gap = max(abs(critics_without[hd] - float(g[f"behavior/out/critic_{hd}_loss"])) for hd in HEADS)
        assert (critic_gap > 1e-3) == (flag == "original_return_indexing"), (flag, critic_gap)
