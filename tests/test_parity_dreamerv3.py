"""Numerical parity of dreamerv3_jax.py with the reference implementation danijar/dreamerv3 @ e3f0224 (golden values).

The golden files tests/data/parity_dreamerv3_{image,vector}.npz were written by benchmark/parity/dreamerv3_reference.py
from the reference code (its set-up and commands: `python benchmark/parity/dreamerv3_reference.py --help`); this test
needs neither the reference nor its dependencies. Each file holds a batch, the reference's parameters in its own names,
fixed sampling noise, and the reference's outputs, gradients and optimizer updates. Here the parameters are mapped onto
ours by the table PARAMETERS below, our code runs on the same inputs and noise, and every output is compared.

Randomness is an input on both sides: jax.random.categorical(key, logits) is replaced by argmax(logits + G) (the
Gumbel-max form that jax.random.categorical computes) and jax.random.normal(key, shape) by Z, for a fixed Gumbel G and
normal Z from the golden file, chosen by the shape of the call: posterior samples (B, S, K), imagined prior samples
(N, S, K), actor samples (N, A). The generator checked that no Gumbel-max sample is within 1e-3 of a tie.

Tolerances (float32): every comparison is max |ours - ref| <= rtol * max |ref| over the compared tensor (the largest
value sets the scale; an elementwise relative error is meaningless where a tensor crosses zero), rtol = 1e-5 for all.
Measured maxima: gradients 4.4e-6 (the loss sums many terms, and the two programs reduce in other orders), everything
else below 1e-6 (several outputs are bit-identical).

Adaptive gradient clipping acts per parameter tensor, so the parameter trees match tensor for tensor: the continuous
actor has separate output layers for its mean and stddev on both sides (test_agc_of_continuous_actor_output_layer_per_
reference_tensor shows that they are clipped separately).
"""

import functools
import json
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dreamerv3_jax as D

DATA = Path(__file__).resolve().parent / "data"
KINDS = ("image", "vector")  # image + 5 discrete actions; vector + 2-dim continuous actions

# ----------------------------------------------------------------------------------------------------------------------
# The parameter table: reference layer (danijar/dreamerv3 name) -> our layer (path in the flax tree). A Linear, Conv or
# BlockLinear layer maps its kernel and bias, a norm layer its scale; all shapes are identical (no transposes).
# ----------------------------------------------------------------------------------------------------------------------

PARAMETERS = {
    "common": [
        # RSSM (dreamerv3/rssm.py RSSM; ours: RSSM)
        ("dyn/dynin0", "rssm/embed_h/Linear_0"), ("dyn/dynin0norm", "rssm/embed_h/NormSiLU_0"),
        ("dyn/dynin1", "rssm/embed_z/Linear_0"), ("dyn/dynin1norm", "rssm/embed_z/NormSiLU_0"),
        ("dyn/dynin2", "rssm/embed_a/Linear_0"), ("dyn/dynin2norm", "rssm/embed_a/NormSiLU_0"),
        ("dyn/dynhid0", "rssm/core_hidden"), ("dyn/dynhid0norm", "rssm/core_norm"),
        ("dyn/dyngru", "rssm/core_gates"),
        ("dyn/prior0", "rssm/prior_layers_0/Linear_0"), ("dyn/prior0norm", "rssm/prior_layers_0/NormSiLU_0"),
        ("dyn/prior1", "rssm/prior_layers_1/Linear_0"), ("dyn/prior1norm", "rssm/prior_layers_1/NormSiLU_0"),
        ("dyn/priorlogit", "rssm/prior_out"),
        ("dyn/obs0", "rssm/post_layer/Linear_0"), ("dyn/obs0norm", "rssm/post_layer/NormSiLU_0"),
        ("dyn/obslogit", "rssm/post_out"),
        # reward and continue heads (embodied/jax/heads.py MLPHead; ours: MLPHead)
        ("rew/mlp/linear0", "rew/NormAct_0/Linear_0"), ("rew/mlp/norm0", "rew/NormAct_0/NormSiLU_0"),
        ("rew/head/logits", "rew/Linear_0"),
        ("con/mlp/linear0", "con/NormAct_0/Linear_0"), ("con/mlp/norm0", "con/NormAct_0/NormSiLU_0"),
        ("con/head/logit", "con/Linear_0"),
        # critic (val) and actor (pol)
        ("val/mlp/linear0", "critic/NormAct_0/Linear_0"), ("val/mlp/norm0", "critic/NormAct_0/NormSiLU_0"),
        ("val/mlp/linear1", "critic/NormAct_1/Linear_0"), ("val/mlp/norm1", "critic/NormAct_1/NormSiLU_0"),
        ("val/mlp/linear2", "critic/NormAct_2/Linear_0"), ("val/mlp/norm2", "critic/NormAct_2/NormSiLU_0"),
        ("val/head/logits", "critic/Linear_0"),
        ("pol/mlp/linear0", "actor/NormAct_0/Linear_0"), ("pol/mlp/norm0", "actor/NormAct_0/NormSiLU_0"),
        ("pol/mlp/linear1", "actor/NormAct_1/Linear_0"), ("pol/mlp/norm1", "actor/NormAct_1/NormSiLU_0"),
        ("pol/mlp/linear2", "actor/NormAct_2/Linear_0"), ("pol/mlp/norm2", "actor/NormAct_2/NormSiLU_0"),
    ],
    "image": [
        # image encoder (dreamerv3/rssm.py Encoder: conv -> max-pool -> norm -> SiLU, 4 times)
        ("enc/cnn0", "enc/Conv_0"), ("enc/cnn0norm", "enc/NormSiLU_0"),
        ("enc/cnn1", "enc/Conv_1"), ("enc/cnn1norm", "enc/NormSiLU_1"),
        ("enc/cnn2", "enc/Conv_2"), ("enc/cnn2norm", "enc/NormSiLU_2"),
        ("enc/cnn3", "enc/Conv_3"), ("enc/cnn3norm", "enc/NormSiLU_3"),
        # image decoder (dreamerv3/rssm.py Decoder with bspace 8): the reference counts its convs down (conv2 first)
        ("dec/sp0", "dec/BlockLinear_0"),
        ("dec/sp1", "dec/NormAct_0/Linear_0"), ("dec/sp1norm", "dec/NormAct_0/NormSiLU_0"),
        ("dec/sp2", "dec/Linear_0"), ("dec/spnorm", "dec/NormSiLU_0"),
        ("dec/conv2", "dec/Conv_0"), ("dec/conv2norm", "dec/NormSiLU_1"),
        ("dec/conv1", "dec/Conv_1"), ("dec/conv1norm", "dec/NormSiLU_2"),
        ("dec/conv0", "dec/Conv_2"), ("dec/conv0norm", "dec/NormSiLU_3"),
        ("dec/imgout", "dec/Conv_3"),
        # discrete actor output (categorical)
        ("pol/head/action/logits", "actor/Linear_0"),
    ],
    "vector": [
        # vector encoder and decoder (3 x Linear -> norm -> SiLU; the decoder's output predicts symlog(x))
        ("enc/mlp0", "enc/NormAct_0/Linear_0"), ("enc/mlp0norm", "enc/NormAct_0/NormSiLU_0"),
        ("enc/mlp1", "enc/NormAct_1/Linear_0"), ("enc/mlp1norm", "enc/NormAct_1/NormSiLU_0"),
        ("enc/mlp2", "enc/NormAct_2/Linear_0"), ("enc/mlp2norm", "enc/NormAct_2/NormSiLU_0"),
        ("dec/mlp/linear0", "dec/NormAct_0/Linear_0"), ("dec/mlp/norm0", "dec/NormAct_0/NormSiLU_0"),
        ("dec/mlp/linear1", "dec/NormAct_1/Linear_0"), ("dec/mlp/norm1", "dec/NormAct_1/NormSiLU_0"),
        ("dec/mlp/linear2", "dec/NormAct_2/Linear_0"), ("dec/mlp/norm2", "dec/NormAct_2/NormSiLU_0"),
        ("dec/vec/vector/pred", "dec/Linear_0"),
        # continuous actor output (bounded normal): two output layers, concatenated as [mean | std] by MLPHead
        ("pol/head/action/mean", "actor/mean"), ("pol/head/action/stddev", "actor/stddev"),
    ],
}  # fmt: skip
SUFFIXES = ("kernel", "bias", "scale")


def layer_table(kind: str) -> list:
    return PARAMETERS["common"] + PARAMETERS[kind]


def tensor_table(kind: str, ref_names) -> list:
    """(reference tensor name, our tensor path) for every tensor of the reference's trained modules."""
    return [(f"{ref}/{s}", f"{ours}/{s}") for ref, ours in layer_table(kind) for s in SUFFIXES if f"{ref}/{s}" in ref_names]


def to_ours(kind: str, ref: dict, prefix: str = "", group: dict | None = None) -> dict:
    """Reference tensors {name: array} -> our nested tree; `prefix` selects e.g. 'param/', 'grad/'; slowval -> critic."""
    tree = {}
    names = {k[len(prefix) :] for k in ref if k.startswith(prefix)}
    for name, ours in tensor_table(kind, names):
        node = tree
        *path, leaf = ours.split("/")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(ref[prefix + name])
    return tree


def slow_critic(kind: str, g: dict, prefix: str) -> dict:
    """The reference's slow critic (`slowval/...`, same layers as `val/...`) as our critic tree."""
    return to_ours(kind, {"val/" + k[len(prefix) :]: v for k, v in g.items() if k.startswith(prefix)})["critic"]


def get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


# ----------------------------------------------------------------------------------------------------------------------
# Goldens, our agent on them, and the comparison
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache
def golden(kind: str) -> dict:
    with np.load(DATA / f"parity_dreamerv3_{kind}.npz") as z:
        g = {k: z[k] for k in z.files}
    g["cfg"] = json.loads(str(g.pop("cfg/json")[()]))
    return g


def make_agent(kind: str):
    """Our Agent at the golden's sizes. Only sizes, imagination horizon, free nats, learning rate and warm-up are set;
    every other hyperparameter is our default (test_defaults_equal_reference_config checks them)."""
    cfg = golden(kind)["cfg"]
    sizes = dict(D.SIZES, parity={k: cfg[k] for k in ("deter", "hidden", "classes", "depth", "units", "stoch")})
    args = D.Args(model_size="parity", imag_horizon=cfg["imag_horizon"], free_nats=cfg["free_nats"],
                  learning_rate=cfg["learning_rate"], warmup=cfg["warmup"])  # fmt: skip
    if kind == "image":
        obs, act = gym.spaces.Box(0, 255, (48, 48, 3), np.uint8), gym.spaces.Discrete(cfg["actions"])
    else:
        obs, act = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32), gym.spaces.Box(-1, 1, (cfg["actions"],), np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "SIZES", sizes)
        agent = D.Agent(args, obs, act)
    return agent


def fixed_noise(mp: pytest.MonkeyPatch, g: dict):
    """Replace jax.random.categorical / normal by the Gumbel-max / identity forms on the golden noise (see docstring)."""
    gumbel = {v.shape: jnp.asarray(v) for k, v in g.items() if k.startswith("in/gumbel_")}
    normal = {v.shape: jnp.asarray(v) for k, v in g.items() if k.startswith("in/normal_")}
    mp.setattr(jax.random, "categorical", lambda key, logits, axis=-1, **kw: jnp.argmax(logits + gumbel[logits.shape], axis))
    mp.setattr(jax.random, "normal", lambda key, shape=(), dtype=jnp.float32: normal[tuple(shape)].astype(dtype))


def batch_of(kind: str, agent) -> dict:
    """The golden batch in our replay format: one-hot (discrete) actions, float16 deter and class-index stoch of step 0."""
    g, cfg = golden(kind), golden(kind)["cfg"]
    action = np.eye(cfg["actions"], dtype=np.float32)[g["in/action"]] if agent.discrete else g["in/action"]
    bsz, n = g["in/reward"].shape
    deter = np.zeros((bsz, n, cfg["deter"]), np.float16)
    deter[:, 0] = g["in/deter0"]  # exactly representable in float16
    stoch = np.zeros((bsz, n, cfg["stoch"]), np.uint8)
    stoch[:, 0] = g["in/stoch0"]
    batch = {"obs": g[f"in/{kind}"], "action": action, "deter": deter, "stoch": stoch}
    return batch | {k: g[f"in/{k}"] for k in ("reward", "is_first", "is_last", "is_terminal")}


@functools.cache
def ours(kind: str) -> dict:
    """Everything our code computes on the golden inputs, in one jitted function (one compilation per kind)."""
    g, agent = golden(kind), make_agent(kind)
    params, slow = to_ours(kind, g, "param/"), slow_critic(kind, g, "param/slowval/")
    batch = batch_of(kind, agent)
    s, k, n = agent.stoch, agent.classes, g["out/deter"].shape[0] * g["out/deter"].shape[1]
    b = D.bins()

    def run(params, slow, retnorm, batch, ref):
        o, key = {}, jax.random.PRNGKey(0)  # the key only feeds jax.random.split; every sample uses the fixed noise
        obs, first = batch["obs"][:, 1:], batch["is_first"][:, 1:]
        h0 = batch["deter"][:, 0].astype(jnp.float32)
        z0 = jax.nn.one_hot(batch["stoch"][:, 0], k)
        # encoder; one RSSM step from the replay context (on the reference's tokens); filtering over the batch
        o["tokens"] = agent.enc.apply({"params": params["enc"]}, obs)
        o["step_deter"] = agent.core(params, h0, z0, batch["action"][:, 0])
        o["step_prior"] = agent.prior(params, o["step_deter"])
        o["step_post"] = agent.posterior(params, o["step_deter"], ref["tokens"][:, 0])
        o["deter"], o["stoch"], o["post"] = agent.observe(params, h0, z0, ref["tokens"], batch["action"][:, :-1], first, key)
        o["prior"] = agent.prior(params, ref["deter"])
        # decoder on the reference's posterior states
        o["recon_all"] = agent.dec.apply({"params": params["dec"]}, ref["deter"], ref["stoch"])
        # imagination from the reference's posterior states, and the heads on the reference's imagined states
        ih, iz, ia = agent.imagine(D.sg(params), ref["deter"].reshape(n, -1), ref["stoch"].reshape(n, s, k), key)
        o["img_deter"], o["img_stoch"], o["img_action"] = ih[:, 1:], iz[:, 1:], ia
        start = lambda x: x.reshape(n, 1, *x.shape[2:])
        ifeat = agent.feat(jnp.concatenate([start(ref["deter"]), ref["img_deter"]], 1),
                           jnp.concatenate([start(ref["stoch"]), ref["img_stoch"]], 1))  # fmt: skip
        o["imag_rew"] = D.twohot_mean(agent.head("rew", params["rew"], ifeat), b)
        o["imag_con"] = jax.nn.sigmoid(agent.head("con", params["con"], ifeat)[..., 0])
        o["imag_val"] = D.twohot_mean(agent.head("critic", params["critic"], ifeat), b)
        o["imag_slowval"] = D.twohot_mean(agent.head("critic", slow, ifeat), b)
        _, logp, entropy = agent.policy(params, ifeat[:, :-1])
        o["logp"], o["entropy"] = logp(ref["img_action"]), entropy
        # one whole Agent._train_step, its optimizer replaced by a probe that keeps the gradients as its state and
        # returns zero updates (the parameters stay, as after the reference's update 1 at lr 0 in warm-up)
        state = D.TrainState(params=params, opt_state=jax.tree.map(jnp.zeros_like, params), slow_critic=slow,
                             retnorm=retnorm, updates=jnp.zeros((), jnp.int32))  # fmt: skip
        new, metrics, _ = agent._train_step(state, batch, key)
        return o, new, metrics

    img_action = g["out/img_action"]
    ref = {
        "tokens": g["out/tokens"], "deter": g["out/deter"], "stoch": g["out/stoch"], "img_deter": g["out/img_deter"],
        "img_stoch": g["out/img_stoch"],
        "img_action": np.eye(agent.act_dim, dtype=np.float32)[img_action] if agent.discrete else img_action,
    }  # fmt: skip
    probe = optax.GradientTransformation(lambda p: None, lambda grads, s, p=None: (jax.tree.map(jnp.zeros_like, grads), grads))
    with pytest.MonkeyPatch.context() as mp:
        fixed_noise(mp, g)
        mp.setattr(agent, "opt", probe)
        o, new, metrics = jax.jit(run)(params, slow, jnp.asarray(g["in/retnorm"]), batch, ref)
    o = {k: np.asarray(v) for k, v in o.items()}
    o["recon"] = o["recon_all"][0, :2] if kind == "image" else o["recon_all"]  # the golden holds two image frames
    return dict(params=params, out=o, metrics={k: float(v) for k, v in metrics.items()}, grads=new.opt_state, new=new)


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| (0 if both are all zero)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(x - ref)) if ref.size else 0.0
    return 0.0 if diff == 0 else float(diff / scale) if scale > 0 else float("inf")


def check(what: str, x, ref, rtol: float = 1e-5):
    err = rel_err(x, ref)
    assert err <= rtol, f"{what}: max |ours - reference| / max |reference| = {err:.2e} > {rtol:.0e}"
    return err


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


def test_defaults_equal_reference_config():
    """Our defaults are the reference's: every hyperparameter not set by make_agent must equal the golden's config."""
    for kind in KINDS:
        cfg, args = golden(kind)["cfg"], make_agent(kind).args
        assert cfg["reference"].startswith("danijar/dreamerv3@e3f0224")
        sc = cfg["loss_scales"]
        pairs = [(args.horizon, cfg["horizon"]), (args.lam, cfg["lam"]), (args.actor_entropy, cfg["actent"]),
                 (args.slowreg, cfg["slowreg"]), (args.dyn_scale, sc["dyn"]), (args.rep_scale, sc["rep"]),
                 (args.repval_scale, sc["repval"]), (args.reward_scale, sc["rew"]), (args.latent_unimix, cfg["unimix"]),
                 (args.slow_critic_mix, cfg["slow_rate"]), (args.agc, cfg["agc"]), (args.opt_eps, cfg["eps"])]  # fmt: skip
        assert all(ours == ref for ours, ref in pairs), pairs
        assert sc["rec"] == sc["con"] == sc["policy"] == sc["value"] == 1.0  # unscaled terms on our side
        assert args.actor_unimix == 0.0  # the reference's categorical actor head ignores its unimix setting (heads.py)
        assert args.replay_context == 1  # configs.yaml replay_context: 1


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_table_maps_every_tensor_with_identical_shapes(kind):
    g, agent = golden(kind), make_agent(kind)
    ref_names = {k[len("param/") :] for k in g if k.startswith("param/") and not k.startswith("param/slowval/")}
    rows = tensor_table(kind, ref_names)
    assert sorted(name for name, _ in rows) == sorted(ref_names)  # every reference tensor, once
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0)).params
    leaves = jax.tree_util.tree_leaves_with_path(template)
    paths = {jax.tree_util.keystr(p, simple=True, separator="/"): v.shape for p, v in leaves}
    assert sorted(ours for _, ours in rows) == sorted(paths)  # every one of ours, once
    for name, path in rows:
        assert g["param/" + name].shape == paths[path], (name, path, g["param/" + name].shape, paths[path])
    assert sum(g["param/" + r].size for r in ref_names) == D.count_params(template)


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_and_decoder(kind):
    g, o = golden(kind), ours(kind)["out"]
    check("encoder tokens", o["tokens"], g["out/tokens"])
    check("decoder output", o["recon"], g["out/recon"])
    obs = g[f"in/{kind}"][:, 1:].astype(np.float32)
    target = obs / 255.0 if kind == "image" else np.sign(obs) * np.log1p(np.abs(obs))  # dec predicts symlog(x)
    check("per-step reconstruction loss", ((o["recon_all"] - target) ** 2).reshape(*obs.shape[:2], -1).sum(-1),
          g[f"out/loss_{kind}"])  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_rssm_step_and_filtering(kind):
    g, o = golden(kind), ours(kind)["out"]
    check("core h_1 = core(h_0, z_0, a_0)", o["step_deter"], g["out/step_deter"])
    check("prior log-probs p(z_1 | h_1)", o["step_prior"], g["out/step_prior"])
    check("posterior log-probs q(z_1 | h_1, e_1)", o["step_post"], g["out/step_post"])
    check("filtered deter h_1..T", o["deter"], g["out/deter"])
    check("filtered posterior log-probs", o["post"], g["out/post"])
    check("posterior samples (straight-through one-hot)", o["stoch"], g["out/stoch"])
    check("prior log-probs over the batch", o["prior"], g["out/prior"])


@pytest.mark.parametrize("kind", KINDS)
def test_imagination_and_heads(kind):
    g, o = golden(kind), ours(kind)["out"]
    check("imagined deter", o["img_deter"], g["out/img_deter"])
    check("imagined latents", o["img_stoch"], g["out/img_stoch"])
    acts = np.eye(o["img_action"].shape[-1])[g["out/img_action"]] if kind == "image" else g["out/img_action"]
    check("imagined actions", o["img_action"], acts)
    check("imagined reward (two-hot mean)", o["imag_rew"], g["out/imag_rew"])
    check("imagined continue probability", o["imag_con"], g["out/imag_con"])
    check("critic value (two-hot mean)", o["imag_val"], g["out/imag_val"])
    check("slow critic value", o["imag_slowval"], g["out/imag_slowval"])
    check("actor log-probability of the imagined actions", o["logp"], g["out/logp"])
    check("actor entropy", o["entropy"], g["out/entropy"])


@pytest.mark.parametrize("kind", KINDS)
def test_lambda_returns_and_return_normaliser(kind):
    g, cfg = golden(kind), golden(kind)["cfg"]
    rew, con, val = (jnp.asarray(g[f"out/imag_{k}"]) for k in ("rew", "con", "val"))
    ret = D.lambda_return(rew, con, cfg["lam"] * jnp.ones_like(con), val)  # as in Agent.loss
    check("imagination lambda-returns", ret, g["out/imag_ret"])
    lo_hi, scale = D.percentile_update(jnp.asarray(g["in/retnorm"]), jnp.asarray(g["out/imag_ret"]))
    check("return normaliser (lo, hi) after the update", lo_hi, g["out/retnorm"])
    check("return scale max(1, hi - lo)", scale, g["out/ret_scale"])
    gamma = 1 - 1 / cfg["horizon"]
    last, term = (jnp.asarray(g[f"in/{k}"][:, 1:], jnp.float32) for k in ("is_last", "is_terminal"))
    rret = D.lambda_return(jnp.asarray(g["in/reward"][:, 1:]), gamma * (1 - term), cfg["lam"] * (1 - last), g["out/rep_boot"])
    check("replay lambda-returns (repval targets)", rret, g["out/rep_ret"])


@pytest.mark.parametrize("kind", KINDS)
def test_loss_terms_and_train_step(kind):
    """Every loss term of our whole train step (Agent._train_step) against the reference's per-step losses; the return
    normaliser, the slow critic's EMA step and the update counter of the step's new state."""
    g, r = golden(kind), ours(kind)
    sc, m, new = g["cfg"]["loss_scales"], r["metrics"], r["new"]
    pairs = {  # our term: reference per-step loss (dreamerv3/agent.py Agent.loss `losses`) x its loss scale
        "wm_recon": ("loss_" + kind, sc["rec"]), "wm_reward": ("loss_rew", sc["rew"]), "wm_cont": ("loss_con", sc["con"]),
        "wm_kl_dyn": ("loss_dyn", sc["dyn"]), "wm_kl_rep": ("loss_rep", sc["rep"]), "actor": ("loss_policy", sc["policy"]),
        "critic": ("loss_value", sc["value"]), "repval": ("loss_repval", sc["repval"]),
    }  # fmt: skip
    assert {k[len("losses/") :] for k in m if k.startswith("losses/")} == set(pairs) | {"total", "entropy", "kl_dyn_raw"}
    for term, (key, scale) in pairs.items():
        check(f"loss term {term}", m["losses/" + term], np.float32(scale) * g["out/" + key].astype(np.float64).mean())
    check("total loss", m["losses/total"], g["out/loss"])
    assert m["finite"] == 1.0
    check("return normaliser (lo, hi) of the train state", new.retnorm, g["out/retnorm"])
    check("return scale in the loss", m["stats/ret_scale"], g["out/ret_scale"])
    check("mean imagination return in the loss", m["stats/ret_mean"], g["out/imag_ret"].mean())
    check("mean replay return in the loss", m["stats/repval_ret"], g["out/rep_ret"].mean())
    check("mean actor entropy in the loss", m["losses/entropy"], g["out/entropy"].mean())
    assert int(new.updates) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(r["params"]), strict=True):  # the probe's zero update
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if kind == "image":  # theta_slow <- 0.02 theta + 0.98 theta_slow (SlowModel.update, rate 0.02, every update)
        want = slow_critic("image", g, "opt/slow/slowval/")
        for path, leaf in jax.tree_util.tree_leaves_with_path(new.slow_critic):
            key = jax.tree_util.keystr(path, simple=True, separator="/")
            check(f"slow critic EMA step of {key}", leaf, get(want, key))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_of_every_parameter(kind):
    g, r = golden(kind), ours(kind)
    ref_names = {k[len("grad/") :] for k in g if k.startswith("grad/")}
    rows = tensor_table(kind, ref_names)
    assert sorted(name for name, _ in rows) == sorted(ref_names)
    for name, path in rows:
        check(f"gradient of {name} ({path})", get(r["grads"], path), g["grad/" + name])


def three_updates(opt, params: dict, grads: list, jit: bool = True) -> list:
    """Our optimizer (Agent.opt: AGC -> LaProp -> warm-up) applied to the gradients in turn; returns the updates.
    One jitted update with the optimizer state as an argument, as in Agent.train_step. The bias correction 1 - 0.999^n
    is ill-conditioned in float32 (an ulp of 0.999^3 moves it by 2e-5): run eagerly (0.999^3 by multiplications) or with
    the state built inside the same jit (constant-folded), our update 3 came out up to 1.4e-5 from the reference's."""
    update = jax.jit(opt.update) if jit else opt.update
    state, updates = opt.init(params), []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    return updates


@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_steps(kind):
    """Three LaProp + AGC + warm-up updates from identical gradients: g / 2^10 (AGC clips few tensors), g reversed per
    tensor, 2^6 g (AGC clips most), so that the clip factors change over time (a constant one cancels in LaProp's RMS
    normalisation). Warm-up 2: update 1 at lr 0 (zero), update 2 at lr / 2, update 3 at lr."""
    g, agent = golden(kind), make_agent(kind)
    names = {k[len("grad/") :] for k in g if k.startswith("grad/")}
    grad = {n: g["grad/" + n] for n in names}
    grads = [{n: np.float32(2.0**-10) * v for n, v in grad.items()},
             {n: v.ravel()[::-1].reshape(v.shape) for n, v in grad.items()},
             {n: np.float32(64.0) * v for n, v in grad.items()}]  # fmt: skip
    updates = three_updates(agent.opt, to_ours(kind, g, "param/"), [to_ours(kind, x) for x in grads])
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(updates[0]))  # warm-up: update 1 is exactly zero
    for name, path in tensor_table(kind, names):
        for i in (2, 3):
            check(f"update {i} of {name} ({path})", get(updates[i - 1], path), g[f"opt/update{i}/{name}"])


def test_agc_of_continuous_actor_output_layer_per_reference_tensor():
    """AGC acts per parameter tensor, and the continuous actor's mean and stddev output layers are separate tensors, as
    in the reference: a gradient that grows in one does not clip the other. A clip factor that stays constant over time
    cancels in LaProp's RMS normalisation, so the test changes one layer's gradient norm over time: update 3 sees the mean
    layer's gradient 64 times larger, the stddev layer's unchanged; the stddev layer's update 3 is then exactly what it
    is without the growth (one clip of a joint [mean | std] layer would shrink it)."""
    g, agent = golden("vector"), make_agent("vector")
    params, grad = to_ours("vector", g, "param/"), to_ours("vector", g, "grad/")
    grow = jax.tree.map(lambda x: x, grad)
    grow["actor"]["mean"] = jax.tree.map(lambda x: 64.0 * x, grad["actor"]["mean"])
    # the growth matters: one clip of the joint [mean | std] kernel would shrink the stddev layer's gradient
    cat = lambda t: jnp.concatenate([t["actor"]["mean"]["kernel"], t["actor"]["stddev"]["kernel"]], -1)
    joint = jnp.split(D.agc_clip(cat(grow), cat(params), agent.args.agc), 2, -1)[1]
    assert not np.allclose(joint, grad["actor"]["stddev"]["kernel"], rtol=1e-3, atol=0)
    grown = three_updates(agent.opt, params, [grad, grad, grow])[2]["actor"]  # one jitted update for both runs
    steady = three_updates(agent.opt, params, [grad, grad, grad])[2]["actor"]
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(grown["stddev"][k]), np.asarray(steady["stddev"][k]))
