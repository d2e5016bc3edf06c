"""Golden values of danijar/dreamerv3 for tests/test_parity_dreamerv3.py (numerical parity of dreamerv3_jax.py).

Reference: danijar/dreamerv3 pinned at commit e3f0224 ("Fix Atari frame maxpooling on reset (#213)"), the code of the
Nature paper (Hafner et al. 2025). This script imports the reference from a checkout given on the command line; nothing
of it is copied into this repository. It builds the reference agent (dreamerv3.agent.Agent with the defaults of
dreamerv3/configs.yaml and the size1m preset, then smaller widths so that each golden file stays small), sets every
parameter from a fixed numpy seed and writes, in the reference's own parameter names (`dyn/dynin0/kernel`, ...):

  tests/data/parity_dreamerv3_image.npz    48x48x3 image observations, 5 discrete actions
  tests/data/parity_dreamerv3_vector.npz   5-dim vector observations, 2-dim continuous actions (bounded normal)

Each file holds (key prefixes):
  cfg/      the sizes and hyperparameters both sides use (deter, hidden, ..., free nats, learning rate, warm-up)
  in/       the training batch (B x T+1 steps, step 0 is the replay context), the replay latents of step 0, the
            return-normaliser state before the update, and the sampling noise (see "Randomness")
  param/    the parameters of the 7 trained modules (dyn, enc, dec, rew, con, pol, val) and of the slow critic
  out/      the reference's outputs: encoder tokens; one RSSM step (core, prior, posterior) from the replay context;
            the posterior filtering over the batch (deter, posterior, sample, prior); decoder outputs of two frames;
            the imagined trajectory (deter, latents, actions) with the reward, continue, critic and slow-critic
            predictions on it; the lambda-returns, return-normaliser state and scale; the replay returns; every loss
            term (per step and its mean) and the total loss
  grad/     the gradient of the total loss for every parameter
  opt/      three LaProp + AGC + warm-up updates from identical gradients (g / 2^10, g reversed per tensor, 2^6 g; update
            1 is zero: warm-up starts at lr 0),
            and (image file) the slow-critic EMA step after update 1

Randomness: RNG streams are never matched. Every sample is drawn from fixed noise on both sides: jax.random.categorical
and jax.random.normal are replaced, while the loss runs, by functions that return argmax(logits + G) (the Gumbel-max
form jax.random.categorical uses) and Z for a fixed Gumbel G / normal Z chosen by the shape of the call (posterior
(B, S, K), imagined prior (N, S, K), actor (N, A)). The test does the same on our side. The script checks that no
Gumbel-max sample is within 1e-3 of a tie, so float noise between the two implementations cannot flip a sample.

Signal on every path: the zero-initialised output layers (reward and critic) get random kernels and a bias that peaks
near the centre bins (predictions of order 1, not sums of symexp(+-20) bins), the slow critic is the critic plus noise,
biases and norm scales are moved away from 0 / 1 (one bias stays 0 so that AGC's 1e-3 floor of the parameter norm is
exercised), the actor's output bias is made non-uniform, and the free nats sit inside the range of the KL values so the
clamp is active for some steps and not for others.

The reference runs on this project's jax (0.10.2, CPU) in float32 (embodied.jax.nets.COMPUTE_DTYPE); its agent is built
without the sharding / compile wrapper of embodied.jax.Agent.__new__ (object.__new__, then __init__) and its functions
are called through ninjax.pure.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

PINNED = "e3f0224"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Sizes: the size1m structure (32 latents -> 4 here, 8 GRU blocks, CNN mults 2,3,4,4, 1 reward/continue layer, 3 actor
# and critic layers) at smaller widths. dreamerv3_jax.SIZES gets the same entry in the test.
SIZE = dict(deter=32, hidden=16, stoch=4, classes=4, depth=2, units=8)
B, T, H = 2, 4, 5  # batch, trained steps per window (the batch holds T + 1, step 0 = replay context), imagination horizon
LR, WARMUP = 1e-3, 2  # warm-up of 2 updates: update 1 at lr 0, update 2 at lr / 2, update 3 at lr
FREE_NATS = {"image": 1.5, "vector": 1.5}  # inside the range of the KL values of these batches (checked below)
RETNORM0 = {"image": (-0.5, 2.0), "vector": (0.0, 0.0)}  # (lo, hi) before the update: scale hi - lo > 1, and scale 1
SEED = {"image": 1, "vector": 2}

SETUP = f"""
set-up (a few minutes; the reference's dependencies go to their own folder, never into the project's venv):
  git clone https://github.com/danijar/dreamerv3 /tmp/dreamerv3
  git -C /tmp/dreamerv3 checkout {PINNED}
  pip install --no-deps --target /tmp/dreamerv3-deps ninjax==3.6.3 elements==3.22.4 portal==3.8.3 \\
      einops==0.8.2 chex==0.1.92 toolz==1.2.0 ruamel.yaml==0.19.1
  python benchmark/parity/dreamerv3_reference.py --ref /tmp/dreamerv3 --deps /tmp/dreamerv3-deps

The rest (jax, numpy, optax, absl-py, msgpack, cloudpickle, psutil) comes from this project's venv (requirements.txt;
--no-deps keeps pip from installing a second jax into the folder). Both files are written deterministically: running
the script twice on one machine gives byte-identical files.
"""


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=SETUP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--ref", required=True, help=f"path of a danijar/dreamerv3 checkout at {PINNED}")
    p.add_argument("--deps", default=None, help="folder that holds the reference's extra dependencies (pip --target)")
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data"), help="output folder (default: tests/data)")
    p.add_argument("--only", choices=("image", "vector"), default=None, help="write only this file")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.ref, "dreamerv3", "agent.py")):
        fail(f"--ref {args.ref}: no dreamerv3/agent.py there (clone danijar/dreamerv3 and check out {PINNED})")
    if args.deps is not None and not os.path.isdir(args.deps):
        fail(f"--deps {args.deps}: not a folder")
    try:
        head = subprocess.run(["git", "-C", args.ref, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        args.commit = head.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        fail(f"--ref {args.ref}: not a git checkout (the commit must be checked)")
    if not args.commit.startswith(PINNED):
        fail(f"--ref {args.ref} is at {args.commit[:7]}, not {PINNED}: run git -C {args.ref} checkout {PINNED}")
    os.makedirs(args.out, exist_ok=True)
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Deterministic .npz writer (np.savez stamps the current time into the zip, so two runs would differ byte-wise)
# ----------------------------------------------------------------------------------------------------------------------


def save_npz(path: str, arrays: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.array(arrays[key], order="C"), allow_pickle=False)  # keeps 0-d
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------------
# Fixed sampling noise: the replacements of jax.random.categorical / jax.random.normal while the reference runs
# ----------------------------------------------------------------------------------------------------------------------


class FixedNoise:
    """Gumbel noise G and normal noise Z, one array per call shape. categorical(key, logits) = argmax(logits + G),
    normal(key, shape) = Z; the key is ignored. Records the smallest gap between the two largest logits + G."""

    def __init__(self, gumbel: dict, normal: dict):
        self.gumbel, self.normal_noise, self.margins = gumbel, normal, []

    def categorical(self, key, logits, axis=-1, shape=None, replace=True, mode=None):
        import jax
        import jax.numpy as jnp

        assert axis == -1, axis
        y = logits + jnp.asarray(self.gumbel[tuple(logits.shape)], logits.dtype)
        top2 = jax.lax.top_k(y, 2)[0]
        jax.debug.callback(lambda m: self.margins.append(float(m)), jnp.min(top2[..., 0] - top2[..., 1]))
        return jnp.argmax(y, -1)

    def normal(self, key, shape=(), dtype=None):
        import jax.numpy as jnp

        return jnp.asarray(self.normal_noise[tuple(shape)], dtype or jnp.float32)


class patched_random:
    """Context manager: jax.random.categorical and jax.random.normal replaced by a FixedNoise's functions."""

    def __init__(self, noise: FixedNoise):
        self.noise = noise

    def __enter__(self):
        import jax

        self.saved = jax.random.categorical, jax.random.normal
        jax.random.categorical, jax.random.normal = self.noise.categorical, self.noise.normal

    def __exit__(self, *exc):
        import jax

        jax.random.categorical, jax.random.normal = self.saved


# ----------------------------------------------------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------------------------------------------------


def import_reference(ref: str, deps: str | None):
    """Put the checkout (and the dependency folder) in front of sys.path, set float32, import the agent module."""
    if ref not in sys.path:
        sys.path[:0] = [ref] + ([deps] if deps else [])
    import embodied.jax.nets as rnets
    import jax.numpy as jnp

    rnets.COMPUTE_DTYPE = jnp.float32  # what embodied.jax.internal.setup(compute_dtype='float32') sets
    from dreamerv3 import agent as ragent

    return ragent


def make_config(ref: str, kind: str):
    """The reference's config as dreamerv3/main.py builds it: defaults, then size1m, then our smaller widths."""
    import elements
    import ruamel.yaml as yaml

    with open(os.path.join(ref, "dreamerv3", "configs.yaml")) as f:
        configs = yaml.YAML(typ="safe").load(f.read())
    config = elements.Config(configs["defaults"]).update(configs["size1m"])
    config = config.update({
        r".*\.rssm": dict(deter=SIZE["deter"], hidden=SIZE["hidden"], stoch=SIZE["stoch"], classes=SIZE["classes"]),
        r".*\.depth": SIZE["depth"], r".*\.units": SIZE["units"],
        "batch_size": B, "batch_length": T, "jax.compute_dtype": "float32", "agent.imag_length": H,
        "agent.opt.lr": LR, "agent.opt.warmup": WARMUP, "agent.dyn.rssm.free_nats": FREE_NATS[kind],
    })  # fmt: skip
    return config, elements.Config(**config.agent, logdir="/tmp/unused", seed=config.seed, jax=config.jax,
                                   batch_size=B, batch_length=T, replay_context=config.replay_context,
                                   report_length=config.report_length, replica=0, replicas=1)  # fmt: skip


def spaces(kind: str):
    import elements

    obs = {"reward": elements.Space(np.float32), "is_first": elements.Space(bool), "is_last": elements.Space(bool),
           "is_terminal": elements.Space(bool)}  # fmt: skip
    if kind == "image":
        obs["image"] = elements.Space(np.uint8, (48, 48, 3))
        act = {"action": elements.Space(np.int32, (), 0, 5)}
    else:
        obs["vector"] = elements.Space(np.float32, (5,))
        act = {"action": elements.Space(np.float32, (2,), -1.0, 1.0)}
    return obs, act


def make_batch(kind: str, rng: np.random.Generator) -> dict:
    """A replay batch of B windows of T + 1 steps. Episode boundaries: window 0 starts an episode at its first trained
    step and ends one by time limit (is_last, not terminal) at step 3 (step 4 is_first); window 1 ends one by a terminal
    at step 2 (step 3 is_first). Continuous actions reach |a| = 1.5 so the RSSM's action clipping is exercised."""
    n = T + 1
    d = {}
    if kind == "image":  # smooth colour gradients plus noise: structured images, not white noise
        yy, xx = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
        phase = rng.uniform(0, 2 * np.pi, (B, n, 1, 1, 3))
        freq = rng.uniform(0.05, 0.3, (B, n, 1, 1, 3))
        img = 127.5 + 100 * np.sin(freq * (xx[..., None] + 0.7 * yy[..., None]) + phase)
        d["image"] = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)  # (B, T+1, 48, 48, 3)
        d["action"] = rng.integers(0, 5, (B, n)).astype(np.int32)
    else:
        d["vector"] = (rng.normal(0, 1, (B, n, 5)) * np.array([0.5, 1, 2, 5, 20])).astype(np.float32)
        d["action"] = rng.uniform(-1.5, 1.5, (B, n, 2)).astype(np.float32)
    d["reward"] = np.round(rng.normal(0, 1.5, (B, n)), 2).astype(np.float32)
    d["is_first"] = np.zeros((B, n), bool)
    d["is_last"] = np.zeros((B, n), bool)
    d["is_terminal"] = np.zeros((B, n), bool)
    d["is_first"][0, [1, 4]] = True
    d["is_last"][0, 3] = True
    d["is_first"][1, 3] = True
    d["is_last"][1, 2] = d["is_terminal"][1, 2] = True
    # replay context: the latents the actor stored for step 0; deter exactly representable in float16 (our replay)
    d["deter0"] = np.tanh(rng.normal(0, 1, (B, SIZE["deter"]))).astype(np.float16).astype(np.float32)
    d["stoch0"] = rng.integers(0, SIZE["classes"], (B, SIZE["stoch"])).astype(np.uint8)  # class indices
    return d


def reference_data(d: dict, obs_space, act_space, ext_space) -> dict:
    """The batch in the reference's format: obs + actions + consec/stepid + the replay entries dyn/deter, dyn/stoch."""
    n = T + 1
    out = {k: d[k] for k in obs_space}
    out["action"] = d["action"]
    out["consec"] = np.zeros((B, n), np.int32)  # 0: the first chunk of a sequence -> start from the replay entries
    out["stepid"] = np.zeros((B, n, 20), np.uint8)
    deter = np.zeros((B, n, SIZE["deter"]), np.float32)
    deter[:, 0] = d["deter0"]
    stoch = np.zeros((B, n, SIZE["stoch"], SIZE["classes"]), np.float32)
    stoch[:, 0] = np.eye(SIZE["classes"], dtype=np.float32)[d["stoch0"]]
    out["dyn/deter"], out["dyn/stoch"] = deter, stoch
    assert set(out) == set(obs_space) | set(act_space) | set(ext_space), (sorted(out), sorted(ext_space))
    return out


def perturb(params: dict, rng: np.random.Generator) -> dict:
    """Move every parameter away from its init where the init hides a path (see the module docstring)."""
    p = {k: np.array(v) for k, v in params.items()}
    centre = 127  # index of the zero bin
    for k in sorted(p):
        if k.endswith("/scale"):  # RMSNorm scales: 1 -> 1 + noise
            p[k] = (1 + rng.normal(0, 0.15, p[k].shape)).astype(np.float32)
        elif k.endswith("/bias") and k != "con/head/logit/bias":  # biases: 0 -> noise (con's stays 0: AGC's floor)
            p[k] = rng.normal(0, 0.1, p[k].shape).astype(np.float32)
    for head, shift in (("rew", 2.0), ("val", 9.0)):  # zero-initialised two-hot heads: random kernel, peaked bias
        k = f"{head}/head/logits"
        p[k + "/kernel"] = rng.normal(0, 0.5, p[k + "/kernel"].shape).astype(np.float32)
        i = np.arange(255)
        p[k + "/bias"] = (-0.5 * ((i - centre - shift) / 6.0) ** 2 + rng.normal(0, 0.1, 255)).astype(np.float32)
    for k in [k for k in p if k.startswith("pol/head/") and k.endswith("/bias")]:  # a non-uniform policy
        p[k] = rng.normal(0, 0.5, p[k].shape).astype(np.float32)
    for k in [k for k in p if k.startswith("val/")]:  # slow critic = critic + noise (the regulariser has signal)
        p["slowval/" + k[4:]] = (p[k] + rng.normal(0, 0.05, p[k].shape)).astype(np.float32)
    return p


def generate(args, kind: str) -> dict:
    ragent = import_reference(args.ref, args.deps)
    import jax
    import jax.numpy as jnp
    import ninjax as nj
    import optax

    rng = np.random.default_rng(SEED[kind])
    config, acfg = make_config(args.ref, kind)
    obs_space, act_space = spaces(kind)
    agent = object.__new__(ragent.Agent)  # without embodied.jax.Agent.__new__'s sharding / compile wrapper
    agent.__init__(obs_space, act_space, acfg)
    rssm, S, K = agent.dyn, SIZE["stoch"], SIZE["classes"]
    N = B * T
    A = 5 if kind == "image" else 2

    d = make_batch(kind, rng)
    data = reference_data(d, obs_space, act_space, agent.ext_space)
    seed = np.array([0, 0], np.uint32)  # only used by nj.seed() for initialisation (every sample uses fixed noise)

    # --- parameters: initialise the reference's state, keep the trained modules + slow critic, perturb --------------
    carry = nj.pure(agent.init_train)({}, B)[1]
    state = nj.init(agent.train)({}, carry, data, seed=seed)
    trained = ("dyn/", "enc/", "dec/", "rew/", "con/", "pol/", "val/")
    params = {k: v for k, v in state.items() if k.startswith(trained + ("slowval/",))}
    params = perturb(params, rng)
    lo0, hi0 = RETNORM0[kind]
    rstate = {**{k: jnp.asarray(v) for k, v in params.items()}, "retnorm/lo/value": jnp.float32(lo0),
              "retnorm/hi/value": jnp.float32(hi0), "slowval_count/value": jnp.int32(0)}  # fmt: skip

    # --- fixed noise ---------------------------------------------------------------------------------------------
    gumbel = lambda shape: -np.log(-np.log(rng.uniform(1e-6, 1 - 1e-6, shape))).astype(np.float32)
    noise_in = {"gumbel_post": gumbel((B, S, K)), "gumbel_prior": gumbel((N, S, K))}
    if kind == "image":
        noise_in["gumbel_act"] = gumbel((N, A))
    else:
        noise_in["normal_act"] = rng.normal(0, 1, (N, A)).astype(np.float32)
    noise = FixedNoise({(B, S, K): noise_in["gumbel_post"], (N, S, K): noise_in["gumbel_prior"],
                        **({(N, A): noise_in["gumbel_act"]} if kind == "image" else {})},
                       {(N, A): noise_in["normal_act"]} if kind == "vector" else {})  # fmt: skip

    # --- the imagination / replay losses, wrapped to also return what they compute internally -------------------
    imag_loss, repl_loss = ragent.imag_loss, ragent.repl_loss

    def imag_loss_recorded(act, rew, con, policy, value, slowvalue, retnorm, valnorm, advnorm, **kw):
        losses, outs, mets = imag_loss(act, rew, con, policy, value, slowvalue, retnorm, valnorm, advnorm, **kw)
        mets = {**mets, "rec/imag_rew": rew, "rec/imag_con": con, "rec/imag_val": value.pred(),
                "rec/imag_slowval": slowvalue.pred(), "rec/imag_ret": outs["ret"], "rec/ret_scale": retnorm.stats()[1],
                "rec/logp": sum(v.logp(jax.lax.stop_gradient(act[k])) for k, v in policy.items())[:, :-1],
                "rec/entropy": sum(v.entropy() for v in policy.values())[:, :-1]}  # fmt: skip
        return losses, outs, mets

    def repl_loss_recorded(last, term, rew, boot, value, slowvalue, valnorm, **kw):
        losses, outs, mets = repl_loss(last, term, rew, boot, value, slowvalue, valnorm, **kw)
        return losses, outs, {**mets, "rec/rep_ret": outs["ret"], "rec/rep_boot": boot}

    # --- one update's loss and gradients, as Agent.train computes them before the optimizer step ------------------
    def loss_and_grads(data):
        carry = agent.init_train(B)
        carry, obs, prevact, _ = agent._apply_replay_context(carry, data)
        loss, _, grads, aux = nj.grad(agent.loss, agent.modules, has_aux=True)(carry, obs, prevact, training=True)
        _, entries, outs, mets = aux
        prior = rssm._dist(rssm._prior(outs["repfeat"]["deter"])).output.dist.logits  # mixed log-probs (B, T, S, K)
        post = rssm._dist(outs["repfeat"]["logit"]).output.dist.logits
        return loss, grads, outs, mets, prior, post

    ragent.imag_loss, ragent.repl_loss = imag_loss_recorded, repl_loss_recorded
    try:
        with patched_random(noise):
            new_state, (loss, grads, outs, mets, prior, post) = jax.jit(nj.pure(loss_and_grads))(rstate, data, seed=seed)
    finally:
        ragent.imag_loss, ragent.repl_loss = imag_loss, repl_loss
    feat = outs["repfeat"]

    # --- components on the reference's own intermediate values -------------------------------------------------------
    def one_step(h, z, a, tokens):  # RSSM observe step from the replay context + the prior of its deter
        carry = {"deter": h, "stoch": z}
        _, (entry, f) = rssm._observe(carry, tokens, {"action": a}, jnp.zeros((B,), bool), True)
        return f["deter"], rssm._dist(rssm._prior(f["deter"])).output.dist.logits, rssm._dist(f["logit"]).output.dist.logits

    def decode(feat):
        _, _, recons = agent.dec({}, feat, jnp.zeros((B, T), bool), True)
        return {k: v.pred() for k, v in recons.items()}

    def imagine(feat):  # the imagination of Agent.loss: from every posterior state, H steps with the actor
        starts = rssm.starts({"deter": feat["deter"], "stoch": feat["stoch"]}, {"deter": feat["deter"][:, 0]}, T)
        policyfn = lambda f: ragent.sample(agent.pol(agent.feat2tensor(f), 1))
        _, imgfeat, imgact = rssm.imagine(starts, policyfn, H, True)
        return imgfeat, imgact

    h0 = jnp.asarray(d["deter0"])
    z0 = jnp.asarray(np.eye(K, dtype=np.float32)[d["stoch0"]])
    with patched_random(noise):
        _, (step_h, step_prior, step_post) = nj.pure(one_step)(rstate, h0, z0, jnp.asarray(data["action"][:, 0]),
                                                              outs["tokens"][:, 0], seed=seed)  # fmt: skip
        _, recon = nj.pure(decode)(rstate, feat, seed=seed)
        _, (imgfeat, imgact) = jax.jit(nj.pure(imagine))(rstate, feat, seed=seed)

    # --- three optimizer steps from identical gradients (the reference's own optax chain) ------------------------
    # The gradient g of the loss, changed by exact operations (scaling by powers of 2, reversal) so that AGC's clip
    # factor changes over time (a factor that stays constant cancels in LaProp's RMS normalisation, which would leave
    # AGC's constants untested): g / 2^10 (few tensors clipped), g reversed per tensor, 2^6 g (most tensors clipped).
    grad = {k: np.asarray(v) for k, v in grads.items()}
    g1 = {k: np.float32(2.0**-10) * v for k, v in grad.items()}
    g2 = {k: v.ravel()[::-1].reshape(v.shape) for k, v in grad.items()}
    g3 = {k: np.float32(64.0) * v for k, v in grad.items()}
    opt = agent._make_opt(**config.agent.opt)
    p = {k: jnp.asarray(params[k]) for k in g1}
    ostate = opt.init(p)
    upd, clipped = {}, []
    for i, g in enumerate((g1, g2, g3), 1):
        agc = config.agent.opt.agc
        clipped.append(sum(bool(np.linalg.norm(g[k]) > agc * max(1e-3, np.linalg.norm(p[k]))) for k in g))
        u, ostate = jax.jit(opt.update)({k: jnp.asarray(v) for k, v in g.items()}, ostate, p)
        p = optax.apply_updates(p, u)
        upd[i] = {k: np.asarray(v) for k, v in u.items()}
    assert all(not np.any(v) for v in upd[1].values()), "update 1 must be zero (warm-up starts at lr 0)"

    # slow critic: the EMA step that follows update 1 (lr 0: the critic is still at its initial value), by the
    # reference's SlowModel.update
    def slow_update():
        agent.slowval.update()
        return {k: v for k, v in nj.context().items() if k.startswith("slowval/")}

    slow_after = nj.pure(slow_update)(rstate)[1]

    # --- checks: no sample near a tie, the free-nats clamp active and inactive, AGC both ways ----------------------
    kl_dyn = np.asarray(jnp.sum(jax.nn.softmax(post) * (jax.nn.log_softmax(post) - jax.nn.log_softmax(prior)), (-2, -1)))
    margin = min(noise.margins)
    print(f"[{kind}] smallest Gumbel-max margin {margin:.2e}; KL range {kl_dyn.min():.3f}..{kl_dyn.max():.3f} "
          f"(free nats {FREE_NATS[kind]}); AGC clips {clipped} of {len(g1)} tensors at updates 1-3; "
          f"loss {float(loss):.6f}")  # fmt: skip
    if margin < 1e-3:
        fail(f"[{kind}] a Gumbel-max sample is within {margin:.1e} of a tie: change SEED")
    if not (kl_dyn.min() < FREE_NATS[kind] < kl_dyn.max()) or np.min(np.abs(kl_dyn - FREE_NATS[kind])) < 1e-3:
        fail(f"[{kind}] free nats {FREE_NATS[kind]} not inside the KL range with a margin: change FREE_NATS")

    # --- collect ----------------------------------------------------------------------------------------------------
    g = lambda x: np.asarray(x)
    out = {"cfg/json": np.array(json.dumps(dict(
        SIZE, batch=B, length=T, imag_horizon=H, learning_rate=LR, warmup=WARMUP, free_nats=FREE_NATS[kind],
        kind=kind, actions=A, discrete=kind == "image", reference=f"danijar/dreamerv3@{args.commit}",
        **{k: config.agent.imag_loss[k] for k in ("lam", "actent", "slowreg")}, horizon=config.agent.horizon,
        loss_scales=dict(config.agent.loss_scales), agc=config.agent.opt.agc, eps=config.agent.opt.eps,
        unimix=config.agent.dyn.rssm.unimix, slow_rate=config.agent.slowvalue.rate), sort_keys=True))}  # fmt: skip
    for k in ("reward", "is_first", "is_last", "is_terminal", "action", "deter0", "stoch0", "image", "vector"):
        if k in d:
            out[f"in/{k}"] = d[k]
    out |= {f"in/{k}": v for k, v in noise_in.items()}
    out["in/retnorm"] = np.array([lo0, hi0], np.float32)
    out |= {f"param/{k}": v for k, v in params.items()}
    out |= {"out/tokens": g(outs["tokens"]), "out/step_deter": g(step_h), "out/step_prior": g(step_prior),
            "out/step_post": g(step_post), "out/deter": g(feat["deter"]), "out/stoch": g(feat["stoch"]),
            "out/post": g(post), "out/prior": g(prior), "out/img_deter": g(imgfeat["deter"]),
            "out/img_stoch": g(imgfeat["stoch"]), "out/img_action": g(imgact["action"]),
            "out/loss": g(loss),
            "out/retnorm": np.array([new_state["retnorm/lo/value"], new_state["retnorm/hi/value"]])}  # fmt: skip
    recon_key = "image" if kind == "image" else "vector"
    out["out/recon"] = g(recon[recon_key][0, :2] if kind == "image" else recon[recon_key])  # image: two frames only
    out |= {f"out/{k[4:]}": g(v) for k, v in mets.items() if k.startswith("rec/")}
    out |= {f"out/{k[len('reploss/rec/'):]}": g(v) for k, v in mets.items() if k.startswith("reploss/rec/")}
    out |= {f"out/loss_{k}": g(v) for k, v in outs["losses"].items()}  # per step, before the mean and the scale
    out |= {f"grad/{k}": g(v) for k, v in grads.items()}
    out |= {f"opt/update{i}/{k}": v for i in (2, 3) for k, v in upd[i].items()}
    if kind == "image":
        out |= {f"opt/slow/{k}": g(v) for k, v in slow_after.items()}
    out["out/margin"] = np.float32(margin)
    return out


def main():
    args = parse_args()
    import jax

    jax.config.update("jax_platforms", "cpu")
    for kind in ("image", "vector"):
        if args.only not in (None, kind):
            continue
        arrays = generate(args, kind)
        path = os.path.join(args.out, f"parity_dreamerv3_{kind}.npz")
        save_npz(path, arrays)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
