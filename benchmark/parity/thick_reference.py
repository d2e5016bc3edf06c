"""Golden values of THIX for tests/test_parity_thick.py (numerical parity of thick_dreamer_jax.py's C-RSSM with THIX).

Reference: THIX, "THICK world models in JAX" (T. Danis and C. Gumbsch, on DreamerV3), pinned at the root commit
brahmasp/thix@a5054b4 ("Initial commit", the upstream snapshot). This script imports THIX from a checkout given on
the command line; nothing of THIX is copied into this repository. It builds THIX's pieces at a small size (the
`debug` preset of thick_dreamer_jax.py: deter 64, hidden 32, 8 latents x 4 classes, context 8, 8 GRU blocks), sets
every parameter from a fixed numpy seed (biases and norm scales perturbed away from their 0 / 1 init so that a
swapped tensor cannot go unnoticed) and writes, in THIX's own parameter names:

  tests/data/parity_thick_crssm.npz    CRSSM parameters; one observe step (GateL0RD context step with injected gate
                                       noise, block-GRU, prior, posterior, coarse prior) on a batch with a reset row,
                                       with the gradients of two weighted sums of its outputs; CRSSM.loss (dyn, rep,
                                       coarse dyn / rep KLs with free nats, THIX's hinged sparsity loss) on a sequence
                                       batch, with its gradients
  tests/data/parity_thick_targets.npz  high-level targets of generate_high_level_world_model_training_targets and
                                       get_action_posterior_future_inputs on a batch with several context changes,
                                       terminals and episode starts (discrete and continuous actions)

Randomness is never matched: the gate noise is an input (both sides add sigma * eps for the same eps), and no output
that depends on a sample is compared.

Compatibility shims, applied at import time (THIX is a 2023-era code base; this project runs jax 0.10.2):
  1. jax.interpreters.xla.pytype_aval_mappings: removed from jax; tensorflow-probability 0.25's JAX substrate registers
     its Variable type there when imported. Aliased to jax._src.core.pytype_aval_mappings.
  2. The packages `dreamerv3`, `dreamerv3.nets` and `embodied` are registered as bare packages (their directories, no
     __init__): THIX's dreamerv3/__init__.py imports the whole agent and embodied/__init__.py the environment, replay
     and server stack, none of which these pieces use (CRSSM refers to embodied only in its `spaces` property).
  3. Not a compatibility shim but the noise injection: dreamerv3.nets.gatel0rd sees a proxy of `jax` whose
     random.normal returns the given eps (of the gate's shape) instead of drawing it.
  4. CRSSM.coarse is wrapped to record the GateL0RD cell's output head y (the input of THIX's coarse prior), which
     THIX computes but does not return.
"""

import argparse
import io
import os
import subprocess
import sys
import textwrap
import types
import zipfile

import numpy as np

PINNED = "a5054b4"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Sizes: the `debug` preset of thick_dreamer_jax.py (SIZES["debug"]), so the test can build its Agent unchanged.
DETER, HIDDEN, STOCH, CLASSES, CTX, BLOCKS = 64, 32, 8, 4, 8, 8
EMBED, ACT = 32, 3  # encoder output width of the debug preset on a vector observation; action width
GATE_NOISE, UNIMIX, FREE, SPARSE_FREE, HORIZON = 0.1, 0.01, 1.0, 1.0, 333

SETUP = f"""
set-up (a few minutes; the THIX dependencies go to their own folder, never into the project's venv):
  git clone https://github.com/brahmasp/thix /tmp/thix
  git -C /tmp/thix checkout {PINNED}
  pip install --no-deps --target /tmp/thix-deps tensorflow-probability==0.25.0 dm-tree==0.1.10 gast==0.7.0 \\
      six==1.17.0 einops==0.8.2
  python benchmark/parity/thick_reference.py --thix /tmp/thix --deps /tmp/thix-deps

The rest (jax, numpy, optax) comes from this project's venv (requirements.txt). The files are written
deterministically: running the script twice gives byte-identical files.
"""


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=SETUP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--thix", required=True, help=f"path of a THIX checkout at {PINNED} (brahmasp/thix)")
    p.add_argument("--deps", default=None, help="folder that holds THIX's extra dependencies (pip install --target)")
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data"), help="output folder (default: tests/data)")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.thix, "dreamerv3", "nets", "crssm.py")):
        fail(f"--thix {args.thix}: no dreamerv3/nets/crssm.py there (clone brahmasp/thix and check out {PINNED})")
    if args.deps is not None and not os.path.isdir(args.deps):
        fail(f"--deps {args.deps}: not a folder")
    head = subprocess.run(["git", "-C", args.thix, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and not head.stdout.strip().startswith(PINNED):
        fail(f"--thix {args.thix} is at {head.stdout.strip()[:7]}, not {PINNED}: git -C {args.thix} checkout {PINNED}")
    return args


# ======================================================================================================================
# Importing THIX (with the shims listed in the docstring)
# ======================================================================================================================


def import_thix(path: str, deps: str | None):
    if deps is not None:
        sys.path.append(os.path.abspath(deps))  # after the venv: THIX's extras never shadow the project's packages
    import jax._src.core as jax_core
    import jax.interpreters.xla as xla

    if not hasattr(xla, "pytype_aval_mappings"):  # shim 1
        xla.pytype_aval_mappings = jax_core.pytype_aval_mappings
    for name in ("dreamerv3", "dreamerv3.nets", "embodied"):  # shim 2
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(os.path.abspath(path), *name.split("."))]
        sys.modules[name] = module
    import importlib

    mods = types.SimpleNamespace(
        nj=importlib.import_module("dreamerv3.ninjax"),
        crssm=importlib.import_module("dreamerv3.nets.crssm"),
        gatel0rd=importlib.import_module("dreamerv3.nets.gatel0rd"),
        hlwm=importlib.import_module("dreamerv3.nets.high_level_world_model"),
    )
    for m in (mods.crssm, mods.gatel0rd, mods.hlwm):
        assert m.__file__.startswith(os.path.abspath(path)), m.__file__
    return mods


class GateNoise:
    """Shim 3: a stand-in for the `jax` module inside dreamerv3.nets.gatel0rd. Everything is jax's, except that
    random.normal returns the injected standard-normal eps (THIX then adds eps * context_gate_noise_scale)."""

    def __init__(self, jax):
        self._jax, self.eps = jax, None
        outer = self

        class Random:
            def __getattr__(self, name):
                return getattr(jax.random, name)

            def normal(self, key, shape, dtype=None):
                assert outer.eps is not None and tuple(shape) == outer.eps.shape, (shape, outer.eps)
                return jax.numpy.asarray(outer.eps, dtype)

        self.random = Random()

    def __getattr__(self, name):
        return getattr(self._jax, name)


# ======================================================================================================================
# Deterministic .npz writer (np.savez stamps the current time into the zip, so two runs would differ byte-wise)
# ======================================================================================================================


def save_npz(path: str, arrays: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path) / 1024:.0f} KiB")


# ======================================================================================================================
# The generator
# ======================================================================================================================


def main():
    args = parse_args()
    mods = import_thix(args.thix, args.deps)
    import jax
    import jax.numpy as jnp

    nj, crssm_mod = mods.nj, mods.crssm
    noise = GateNoise(jax)
    mods.gatel0rd.jax = noise  # shim 3
    recorded = {}
    coarse_orig = crssm_mod.CRSSM.coarse

    def coarse_recorded(self, context, stoch_proj, action_proj):  # shim 4
        out, context, gates = coarse_orig(self, context, stoch_proj, action_proj)
        recorded["coarse_feat"] = out
        return out, context, gates

    crssm_mod.CRSSM.coarse = coarse_recorded
    rng = np.random.default_rng(20250925)
    f32 = lambda x: np.asarray(x, np.float32)

    # THIX's `thick` config for dyn (dreamerv3/configs.yaml: dyn.rssm + the thick dyn.crssm), at the debug size
    dyn = crssm_mod.CRSSM(
        deter=DETER,
        hidden=HIDDEN,
        stoch=STOCH,
        classes=CLASSES,
        context=CTX,
        blocks=BLOCKS,
        context_integration="everywhere",
        context_gate_noise_scale=GATE_NOISE,
        act="silu",
        norm="rms",
        unimix=UNIMIX,
        outscale=1.0,
        imglayers=2,
        obslayers=1,
        coarse_layers=1,
        dynlayers=1,
        cell="blockgru",
        free=FREE,
        sparse_free=SPARSE_FREE,
        sparse_over_time_only=False,
        winit="normal",
        name="dyn",
    )

    def step(carry, action, embed, reset):  # one observe step and the prior of its (deter, context)
        carry, outs = dyn.observe(carry, action, embed, reset)
        return outs, dyn._prior(outs["deter"], outs["context"])

    # ------------------------------------------------------------------------ inputs of one observe step, parameters
    B = 4
    step_in = {
        "deter": f32(rng.uniform(-1, 1, (B, DETER))),
        "stoch": f32(np.eye(CLASSES)[rng.integers(0, CLASSES, (B, STOCH))]),
        "context": f32(rng.uniform(-0.9, 0.9, (B, CTX))),
        "action": f32(rng.normal(0, 1.5, (B, ACT))),  # some |a| > 1: the a / max(1, |a|) clip is exercised
        "embed": f32(rng.normal(0, 1, (B, EMBED))),
        "reset": np.array([False, True, False, False]),  # row 1 starts an episode: its carry and action are zeroed
        "gate_eps": f32(rng.normal(0, 1, (B, CTX))),  # injected gate noise (standard normal; THIX scales it by 0.1)
    }

    def step_args(x):
        carry = {k: jnp.asarray(x[k]) for k in ("deter", "stoch", "context")}
        return carry, jnp.asarray(x["action"]), jnp.asarray(x["embed"]), jnp.asarray(x["reset"])

    noise.eps = step_in["gate_eps"]
    shapes = nj.init(step)({}, *step_args(step_in), seed=0)  # creates every CRSSM parameter (values replaced below)
    params = {}
    for name in sorted(shapes):
        shape = shapes[name].shape
        if name.endswith("/kernel"):  # truncated normal / sqrt(fan_in), drawn here so the goldens do not depend on jax
            fan_in = int(np.prod(shape[:-1]))  # block kernels (g, in/g, out/g): the full input width, as ours
            params[name] = f32(np.clip(rng.normal(0, 1, shape), -2, 2) / np.sqrt(fan_in))
        elif name.endswith("/bias"):
            params[name] = f32(rng.normal(0, 0.3, shape))
        elif name.endswith("/scale"):
            params[name] = f32(1 + rng.normal(0, 0.2, shape))
        else:
            raise ValueError(f"unexpected THIX parameter {name}")

    # ------------------------------------------------------------------------------------------- one observe step
    pure_step = nj.pure(step)

    def run_step(p, x):
        noise.eps = x["gate_eps"]
        carry, action, embed, reset = x["carry"], x["action"], x["embed"], x["reset"]
        _, (outs, prior) = pure_step(p, carry, action, embed, reset, seed=0)
        return outs, prior

    x0 = dict(zip(("carry", "action", "embed", "reset"), step_args(step_in), strict=True)) | {"gate_eps": step_in["gate_eps"]}
    recorded.clear()
    outs, prior = run_step({k: jnp.asarray(v) for k, v in params.items()}, x0)
    out = {
        "step_out/deter": outs["deter"],
        "step_out/context": outs["context"],
        "step_out/coarse_gates": outs["coarse_gates"],
        "step_out/logit": outs["logit"],
        "step_out/prior_logit": prior,
        "step_out/coarse_logit": outs["coarse_logit"],
        "step_out/coarse_feat": recorded["coarse_feat"],
    }

    # gradients of two weighted sums of the outputs: the context path alone (gate, straight-through, c update) and
    # every output that both designs share (+ deter, posterior and prior logits); w.r.t. parameters and inputs
    w = {
        "w_gates": f32(rng.normal(0, 1, (B, CTX))),
        "w_context": f32(rng.normal(0, 1, (B, CTX))),
        "w_deter": f32(rng.normal(0, 1, (B, DETER))),
        "w_logit": f32(rng.normal(0, 1, (B, STOCH, CLASSES))),
        "w_prior": f32(rng.normal(0, 1, (B, STOCH, CLASSES))),
    }

    def weighted(outs, prior, full: bool):
        total = jnp.sum(w["w_gates"] * outs["coarse_gates"]) + jnp.sum(w["w_context"] * outs["context"])
        if full:
            total += jnp.sum(w["w_deter"] * outs["deter"]) + jnp.sum(w["w_logit"] * outs["logit"])
            total += jnp.sum(w["w_prior"] * prior)
        return total

    for tag, full in (("gate", False), ("step", True)):

        def loss(p, carry, action, embed, full=full):
            outs, prior = run_step(p, x0 | {"carry": carry, "action": action, "embed": embed})
            return weighted(outs, prior, full)

        p_j = {k: jnp.asarray(v) for k, v in params.items()}
        gp, gc, ga, ge = jax.grad(loss, argnums=(0, 1, 2, 3))(p_j, x0["carry"], x0["action"], x0["embed"])
        out |= {f"grad_{tag}/param/{k}": v for k, v in gp.items()}
        out |= {f"grad_{tag}/in/{k}": v for k, v in gc.items()} | {f"grad_{tag}/in/action": ga, f"grad_{tag}/in/embed": ge}

    # --------------------------------------------------------------------------------- CRSSM.loss on a sequence batch
    Bl, T = 3, 10
    loss_in = {"deter": f32(rng.uniform(-1, 1, (Bl, T, DETER))), "context": f32(rng.uniform(-0.9, 0.9, (Bl, T, CTX)))}
    # posterior logits = THIX's prior logits + noise whose scale grows along each row, so that some KLs lie below the
    # free nat (clipped: no gradient) and some above; the coarse prior's logits likewise around the posterior's
    p_j = {k: jnp.asarray(v) for k, v in params.items()}
    _, prior_seq = nj.pure(lambda d, c: dyn._prior(d, c))(p_j, jnp.asarray(loss_in["deter"]), jnp.asarray(loss_in["context"]))
    spread = np.linspace(0.05, 1.5, Bl * T, dtype=np.float32).reshape(Bl, T, 1, 1)
    loss_in["logit"] = f32(np.asarray(prior_seq) + spread * rng.normal(0, 1, (Bl, T, STOCH, CLASSES)))
    loss_in["coarse_logit"] = f32(loss_in["logit"] + spread[::-1] * rng.normal(0, 1, (Bl, T, STOCH, CLASSES)))
    # gate openings: row 0 never opens (S_0 = 0 < sparse_free), row 1 opens 5 dims in all (S_1 = 5/8 < 1: hinge, no
    # gradient), row 2 opens about half of them (S_2 ~ 5 > 1: gradient 1 / (B T C) per opening)
    gates = np.zeros((Bl, T, CTX), np.float32)
    gates[1, [2, 2, 6, 6, 9], [0, 3, 1, 5, 7]] = 1.0
    gates[2] = rng.random((T, CTX)) < 0.5
    loss_in["coarse_gates"] = gates
    pure_loss = nj.pure(lambda outs: dyn.loss(outs)[0])
    scales = {"dyn": 1.0, "rep": 0.1, "coarse_dyn": 1.0, "coarse_rep": 0.1, "sparse": 1.0}  # THIX's `thick` loss_scales

    def crssm_loss(p, outs):
        _, losses = pure_loss(p, outs, seed=0)
        return losses

    def crssm_total(p, outs):  # as ThickAgent.loss combines them: sum over terms of mean(scale * term)
        losses = crssm_loss(p, outs)
        return sum(jnp.mean(scales[k] * v) for k, v in losses.items())

    outs_j = {k: jnp.asarray(v) for k, v in loss_in.items()}
    losses = crssm_loss(p_j, outs_j)
    out |= {f"loss_out/{k}": v for k, v in losses.items()}
    gp, go = jax.grad(crssm_total, argnums=(0, 1))(p_j, outs_j)
    out |= {f"grad_loss/param/{k}": v for k, v in gp.items() if "/img" in k}  # the prior's parameters (others: 0)
    out |= {f"grad_loss/in/{k}": v for k, v in go.items()}
    loss_scales = np.array([scales[k] for k in sorted(scales)], np.float32)

    crssm = {f"param/{k}": v for k, v in params.items()}
    crssm |= {f"step_in/{k}": v for k, v in step_in.items()} | {f"step_in/{k}": v for k, v in w.items()}
    crssm |= {f"loss_in/{k}": v for k, v in loss_in.items()} | {"loss_in/scales": loss_scales}
    crssm |= {k: np.asarray(v, np.float32) for k, v in out.items()}
    crssm["meta/sizes"] = np.array([DETER, HIDDEN, STOCH, CLASSES, CTX, BLOCKS, EMBED, ACT], np.int32)
    crssm["meta/constants"] = np.array([GATE_NOISE, UNIMIX, FREE, SPARSE_FREE], np.float32)
    os.makedirs(args.out, exist_ok=True)
    save_npz(os.path.join(args.out, "parity_thick_crssm.npz"), crssm)
    save_npz(os.path.join(args.out, "parity_thick_targets.npz"), make_targets(mods, rng))


def make_targets(mods, rng):
    """High-level targets on a hand-made batch (B = 5, T = 12), time flows left to right; `g` = a gate opened (the
    context changes there), `f` = is_first, `x` = is_terminal:
      row 0: f at 0; g at 2, 5, 9                                  (plain segments; t >= 9 has no later event)
      row 1: f at 0 and 4, x at 3; g at 2, 4, 6, 10                (episode boundary: no target crosses is_first)
      row 2: no f at 0 (window starts mid-episode); x at 6, f and g at 7; g at 11 (the last step)
      row 3: f at 0 and nothing else                               (no events: every target invalid)
      row 4: f at 0; g at 3 and 8, and at 5 a gate opens with a change too small for float32 (c bitwise unchanged)
    Row 4 shows the one documented difference of the extraction: THIX detects changes by jnp.diff of the context,
    thick_dreamer_jax.py by the gates."""
    import jax.numpy as jnp

    B, T = 5, 12
    first, term = np.zeros((B, T), bool), np.zeros((B, T), bool)
    gates = np.zeros((B, T, CTX), np.float32)
    changes = {0: [2, 5, 9], 1: [2, 4, 6, 10], 2: [7, 11], 3: [], 4: [3, 8]}
    first[[0, 1, 1, 2, 3, 4], [0, 0, 4, 7, 0, 0]] = True
    term[[1, 2], [3, 6]] = True
    context = np.zeros((B, T, CTX), np.float32)
    for b in range(B):
        c = np.float32(rng.uniform(-0.9, 0.9, CTX))
        for t in range(T):
            if t in changes[b] or first[b, t]:
                dims = rng.random(CTX) < 0.4
                dims[rng.integers(CTX)] = True  # at least one dim opens
                gates[b, t, dims] = 1.0
                c = np.where(dims, np.float32(rng.uniform(-0.9, 0.9, CTX)), c).astype(np.float32)
            context[b, t] = c
    gates[4, 5, 2] = 1.0  # open gate, but c_5 == c_4 bitwise (Lambda * (r - c) below half an ulp of c)
    logit = np.float32(rng.normal(0, 1.5, (B, T, STOCH, CLASSES)))
    logit = logit - np.log(np.exp(logit).sum(-1, keepdims=True))  # log-probabilities, like the posterior's
    stoch = np.float32(np.eye(CLASSES)[rng.integers(0, CLASSES, (B, T, STOCH))])
    reward = np.float32(rng.normal(0, 1, (B, T)))
    action_disc = rng.integers(0, ACT, (B, T)).astype(np.int32)
    action_cont = np.float32(rng.uniform(-1, 1, (B, T, ACT)))
    data = {"context": context, "logit": logit, "is_first": first, "is_terminal": term, "reward": reward}
    spaces = {"disc": types.SimpleNamespace(discrete=True, classes=ACT), "cont": types.SimpleNamespace(discrete=False)}
    out = {
        "in/context": context,
        "in/gates": gates,
        "in/logit": logit,
        "in/stoch": stoch,
        "in/is_first": first,
        "in/is_terminal": term,
        "in/reward": reward,
        "in/action_disc": action_disc,
        "in/action_cont": action_cont,
        "in/horizon": np.array(HORIZON, np.int32),
    }
    for kind, action in (("disc", action_disc), ("cont", action_cont)):
        act_space = {"action": spaces[kind]}
        data_k = {k: jnp.asarray(v) for k, v in data.items()} | {"action": jnp.asarray(action)}
        targets, mask = mods.hlwm.generate_high_level_world_model_training_targets(data_k, act_space, HORIZON)
        out[f"out_{kind}/action"] = np.asarray(targets["action"], np.float32)
        if kind == "disc":  # the rest does not depend on the action space
            out |= {f"out/{k}": np.asarray(targets[k]) for k in ("logit", "t_delta", "reward")}
            out["out/mask"] = np.asarray(mask)
            post = mods.hlwm.get_action_posterior_future_inputs(data_k)
            out |= {f"out/{k}": np.asarray(v) for k, v in post.items()}
    return out


if __name__ == "__main__":
    try:
        main()
    except ImportError as e:
        print(textwrap.fill(f"error: {e} (see --help for the set-up)", 127), file=sys.stderr)
        sys.exit(2)
