"""Golden values of Snagnar/Hieros for tests/test_parity_hieros.py (numerical parity of hieros_s5_torch.py).

Reference: HIEROS, "Hierarchical Imagination on Structured State Space Sequence World Models" (P. Mattes,
R. Schlosser, R. Herbrich; arXiv 2310.05167, ICML 2024), code pinned at Snagnar/Hieros@ab4c593. This script imports
the reference from a checkout given on the command line; nothing of it is copied into this repository. It builds the
reference's pieces at a small width, sets every parameter from a fixed seed (biases, norm scales, the zero-initialised
heads and the learned initial state perturbed away from their init, so that every path carries signal and a swapped
tensor cannot go unnoticed) and writes the inputs, the parameters in the reference's own names and the outputs:

  tests/data/parity_hieros_s5.npz       resettable_s5: the S5 layer (S5) and the double block (ReworkedDoubleS5Block,
                                        ff_layers 0, attn_linear), parallel (resettable scan) and recurrent (step, the
                                        state zeroed at resets), on sequences with resets; the HiPPO-LegS init of
                                        Lambda; one step of the S5 world model (networks.Seq2SeqDynamics: initial
                                        state, obs_step with episode starts, img_step)
  tests/data/parity_hieros_wm.npz       models.WorldModel._train on a batch of vector observations with episode starts
                                        and terminals (the optimizer step replaced by recording the loss and its
                                        gradients): every loss term and the gradient of every parameter, with the
                                        stored actions fed as they are (the original) and shifted by one step
  tests/data/parity_hieros_wm_image.npz the same on 64 x 64 x 3 images (CNN encoder and decoder, depth 2), with the
                                        gradients of the encoder and decoder
  tests/data/parity_hieros_subgoal.npz  models.SubgoalAutoencoder (code, decoded goal, both loss terms) and the subgoal
                                        (max-cosine) and novelty rewards of hieros.SubActor
  tests/data/parity_hieros_etbs.npz     embodied/replay/selectors.EfficientTimeBalanced: the index drawn for given
                                        uniform draws, and the sampling probabilities (a fine grid of draws), for
                                        several buffer sizes N, temperatures and scales M (M = N and M = capacity)

Randomness is never matched: the posterior samples of the world model are an input (the reference's
tools.OneHotDist.sample returns the given one-hot sample, with its straight-through term), every other categorical is
taken at its mode, the S5 dropout is 0 (the parity of dropout-free paths), and the ETBS uniform draws are an input.

The reference is imported with its own module layout (hieros/ on sys.path, as hieros/train.py runs it); its config is
configs.yaml's `defaults` with the small sizes below, built like hieros/train.py does. Shims, none of them in a
computation:
  1. tools.OneHotDist.sample returns the injected sample (above).
  2. tools.TimeRecording (the wall-clock timer around WorldModel._train's parts) uses CUDA events; it is replaced by a
     timer that does nothing, so the reference runs on a CPU.
  3. WorldModel._model_opt (the optimizer step) is replaced by a function that records the loss and its gradients.
  4. SubActor._subgoal_reward and SubActor._novelty_reward need a whole hieros.SubActor (replay, logger, environment):
     they are called unbound on a namespace that holds just the attributes they read.
"""

import argparse
import io
import os
import pathlib
import subprocess
import sys
import types
import zipfile

import numpy as np

PINNED = "ab4c593"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Small sizes (hieros_s5_torch.py's `debug` preset, with two S5 blocks and two-layer MLPs so that stacking is checked)
STOCH, CLASSES, DETER, HIDDEN = 4, 4, 16, 16  # 4 x 4 categorical latent, deter 16
WIDTH, STATE, INIT_BLOCKS, NUM_BLOCKS = 16, 8, 2, 2  # S5 width H, state P (complex), HiPPO blocks J, double blocks
UNITS, LAYERS, OBS, ACT = 32, 2, 5, 3  # MLP width and depth (encoder, decoder, heads), vector obs, one-hot actions
CODE = (8, 8)  # subgoal code: 8 factors x 8 classes, as the paper
BEHAVIOR_UNITS = 16  # actor, critics, reward and continue heads of the actor-critic golden
CNN_DEPTH = 2  # channels of the first conv layer of the image encoder (x 1, 2, 4, 8) and of the decoder's last

SETUP = f"""
set-up (a few minutes; the reference's extra dependencies go to their own folder, never into the project's venv):
  git clone https://github.com/Snagnar/Hieros /tmp/hieros
  git -C /tmp/hieros checkout {PINNED}
  pip install --target /tmp/hieros-deps einops==0.6.1 wandb==0.31.0 pyzmq==27.3.0
  python benchmark/parity/hieros_reference.py --hieros /tmp/hieros --deps /tmp/hieros-deps

The rest (torch, numpy, scipy, jax for resettable_s5's tree utilities, ruamel.yaml, psutil, pillow, tensorboard,
tqdm, rich, cloudpickle) comes from this project's venv (requirements.txt and what it pulls in). wandb and pyzmq are
imported, not used (the logging and the parallel environments are off). The files are written deterministically:
running the script twice gives byte-identical files.
"""


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=SETUP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--hieros", required=True, help=f"path of a Snagnar/Hieros checkout at {PINNED}")
    p.add_argument("--deps", default=None, help="folder that holds the reference's extra dependencies (pip --target)")
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data"), help="output folder (default: tests/data)")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.hieros, "hieros", "networks.py")):
        fail(f"--hieros {args.hieros}: no hieros/networks.py there (clone Snagnar/Hieros and check out {PINNED})")
    if args.deps is not None and not os.path.isdir(args.deps):
        fail(f"--deps {args.deps}: not a folder")
    head = subprocess.run(["git", "-C", args.hieros, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and not head.stdout.strip().startswith(PINNED):
        fail(f"--hieros {args.hieros} is at {head.stdout.strip()[:7]}, not {PINNED}: git -C {args.hieros} checkout {PINNED}")
    if not os.path.isdir(args.out):
        fail(f"--out {args.out}: not a folder")
    return args


# ======================================================================================================================
# Importing the reference, its config, and the injected posterior samples
# ======================================================================================================================


def import_hieros(path: str, deps: str | None):
    """The reference's modules, imported as hieros/train.py does (hieros/ and the checkout root on sys.path)."""
    if deps is not None:
        sys.path.append(os.path.abspath(deps))  # after the venv: the reference's extras never shadow the project's packages
    path = os.path.abspath(path)
    sys.path[:0] = [os.path.join(path, "hieros"), path]
    import importlib

    mods = types.SimpleNamespace(
        tools=importlib.import_module("tools"),
        networks=importlib.import_module("networks"),
        models=importlib.import_module("models"),
        hieros=importlib.import_module("hieros"),  # hieros/hieros.py (SubActor)
        s5=importlib.import_module("resettable_s5"),
        selectors=importlib.import_module("embodied.replay.selectors"),
        embodied=importlib.import_module("embodied"),
    )
    for name in ("tools", "networks", "models", "hieros", "s5", "selectors"):
        assert getattr(mods, name).__file__.startswith(path), getattr(mods, name).__file__
    return mods


def make_config(mods, path: str):
    """configs.yaml `defaults` plus the small sizes, parsed like hieros/train.py (tools.args_type per key)."""
    import ruamel.yaml

    configs = ruamel.yaml.YAML(typ="safe", pure=True).load(pathlib.Path(path, "hieros", "configs.yaml").read_text())

    def update(base, new):
        for k, v in new.items():
            if isinstance(v, dict) and k in base:
                update(base[k], v)
            else:
                base[k] = v

    d = {}
    update(d, configs["defaults"])
    update(d, dict(device="cpu", compile=False, precision=32, dyn_stoch=STOCH, dyn_discrete=CLASSES, dyn_deter=DETER,
                   dyn_hidden=HIDDEN, units=UNITS, reward_layers=LAYERS, cont_layers=LAYERS, actor_layers=LAYERS,
                   value_layers=LAYERS, num_actions=ACT, actor_dist="onehot", imag_gradient="reinforce",
                   s5=dict(model_dim=WIDTH, state_dim=STATE, init_blocks=INIT_BLOCKS, num_blocks=NUM_BLOCKS,
                           attn_dropout=0.0, ff_dropout=0.0, attn_act="GELU"),
                   encoder=dict(mlp_keys="vector", cnn_keys="$^", mlp_layers=LAYERS, mlp_units=UNITS),
                   decoder=dict(mlp_keys="vector", cnn_keys="$^", mlp_layers=LAYERS, mlp_units=UNITS)))  # fmt: skip
    return argparse.Namespace(**{k: mods.tools.args_type(v)(v) for k, v in d.items()})


class InjectedSamples:
    """tools.OneHotDist.sample returns the queued one-hot samples (with the reference's straight-through term
    probs - sg(probs)), in the order the reference draws them; with none queued it returns the mode (no RNG)."""

    def __init__(self, tools):
        import torch

        self.queue = []
        outer = self

        def sample(dist, sample_shape=(), seed=None):
            probs = dist.probs
            if outer.queue:
                value = torch.as_tensor(outer.queue.pop(0), dtype=probs.dtype)
                assert value.shape == probs.shape, (value.shape, probs.shape)
            else:
                value = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
            return value + probs - probs.detach()

        tools.OneHotDist.sample = sample


class NoTimer:
    """Shim 2: tools.TimeRecording without CUDA events."""

    def __init__(self, *args, **kwargs):
        self.elapsed_time = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ======================================================================================================================
# Deterministic .npz writer (np.savez stamps the current time into the zip, so two runs would differ byte-wise)
# ======================================================================================================================


def save_npz(path: str, arrays: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.array(arrays[key], order="C"), allow_pickle=False)  # (keeps 0-d arrays 0-d)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path) / 1024:.0f} KiB")


# ======================================================================================================================
# The generator
# ======================================================================================================================


def perturb(module, torch, scale=0.1):
    """Move every parameter away from its init: float += scale N(0, 1); complex Lambda: both parts (Re stays < 0)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_complex():
                p.add_(torch.complex(scale * torch.randn(p.shape), scale * torch.randn(p.shape)))
            else:
                p.add_(scale * torch.randn(p.shape))


def params(prefix, module):
    return {f"{prefix}/param/{k}": v.detach().numpy().copy() for k, v in module.named_parameters()}


def resets(rng, b, t, p=0.2):
    """(B, T) episode starts: the first step of every row, random inner ones, one row with two in a row."""
    r = rng.random((b, t)) < p
    r[:, 0] = True
    r[-1, 3:5] = True
    return r


def s5_goldens(mods, torch, rng):
    """The S5 layer and the double block, parallel and recurrent, with resets; the HiPPO init; one S5WM step."""
    out = {}
    b, t = 3, 11
    # ---- S5 layer (resettable_s5.S5, bcInit dense, as ReworkedDoubleS5Block builds it)
    s5 = mods.s5.S5(WIDTH, state_width=STATE, block_count=INIT_BLOCKS, bcInit="dense", resettable=True)
    out["s5/init_Lambda"] = s5.seq.Lambda.detach().numpy().copy()  # HiPPO-LegS, J blocks (deterministic)
    perturb(s5, torch)
    u = torch.randn(b, t, WIDTH)
    reset = resets(rng, b, t)
    r = torch.as_tensor(reset, dtype=torch.float32)[..., None]  # (B, T, 1), as Seq2SeqDynamics.observe passes it
    with torch.no_grad():
        y, x = s5(u, r)
        state, ys, xs = torch.zeros(b, STATE, dtype=torch.complex64), [], []
        for k in range(t):  # recurrent: S5.step, the state zeroed at a reset (x_t = B_bar u_t there)
            state = torch.where(r[:, k].bool(), torch.zeros_like(state), state)
            yk, state = s5.step(u[:, k], state)
            ys.append(yk), xs.append(state)
    out.update(params("s5", s5))
    out.update({"s5/in/u": u.numpy(), "s5/in/reset": reset, "s5/out/y": y.numpy(), "s5/out/x": x.numpy(),
                "s5/out/y_step": torch.stack(ys, 1).numpy(), "s5/out/x_step": torch.stack(xs, 1).numpy()})  # fmt: skip
    # ---- double block (ReworkedDoubleS5Block with the paper config: ff_layers 0, attn_linear, GELU; dropout 0)
    blk = mods.s5.ReworkedDoubleS5Block(WIDTH, STATE, False, INIT_BLOCKS, ff_layers=0, attn_linear=True, attn_act="GELU",
                                        resettable=True)  # fmt: skip
    perturb(blk, torch)
    blk.eval()
    u = torch.randn(b, t, WIDTH)
    with torch.no_grad():
        yb = blk(u, r)
        sb = blk._state  # (B, T, 2P): both SSMs' states
        state, ys, xs = blk.initial_state(b), [], []
        for k in range(t):
            state = torch.where(r[:, k].bool(), torch.zeros_like(state), state)
            yk, state = blk.step(u[:, k], state)
            ys.append(yk), xs.append(state)
    out.update(params("block", blk))
    out.update({"block/in/u": u.numpy(), "block/in/reset": reset, "block/out/y": yb.numpy(), "block/out/x": sb.numpy(),
                "block/out/y_step": torch.stack(ys, 1).numpy(), "block/out/x_step": torch.stack(xs, 1).numpy()})  # fmt: skip
    # ---- one S5WM step (networks.Seq2SeqDynamics): initial state, obs_step with episode starts, img_step
    config = make_config(mods, HIEROS)
    dyn = mods.networks.Seq2SeqDynamics(seq_model="s5", stoch=STOCH, deter=DETER, hidden=HIDDEN, discrete=CLASSES,
                                        num_actions=ACT, embed=UNITS, stochastic=True, device="cpu",
                                        config=config)  # fmt: skip
    perturb(dyn, torch)
    dyn.eval()
    n = 4
    prev = {
        "stoch": torch.nn.functional.one_hot(torch.randint(0, CLASSES, (n, STOCH)), CLASSES).float(),
        "deter": torch.randn(n, DETER),
        "state": torch.complex(torch.randn(n, NUM_BLOCKS, 2 * STATE), torch.randn(n, NUM_BLOCKS, 2 * STATE)) * 0.5,
    }
    action = torch.nn.functional.one_hot(torch.randint(0, ACT, (n,)), ACT).float()
    embed = torch.randn(n, UNITS)
    is_first = torch.tensor([True, False, True, False])
    with torch.no_grad():
        init = dyn.initial(n)
        post, prior = dyn.obs_step({k: v.clone() for k, v in prev.items()}, action.clone(), embed, is_first.float(),
                                   sample=False)  # fmt: skip
        img = dyn.img_step({k: v.clone() for k, v in prev.items()}, action.clone(), sample=False)
    out.update(params("wmstep", dyn))
    out.update({"wmstep/in/stoch": prev["stoch"].numpy(), "wmstep/in/deter": prev["deter"].numpy(),
                "wmstep/in/state": prev["state"].numpy(), "wmstep/in/action": action.numpy(),
                "wmstep/in/embed": embed.numpy(), "wmstep/in/is_first": is_first.numpy(),
                "wmstep/out/init_stoch": init["stoch"].numpy(), "wmstep/out/init_deter": init["deter"].numpy(),
                "wmstep/out/post_logit": post["logit"].numpy(), "wmstep/out/post_stoch": post["stoch"].numpy(),
                "wmstep/out/prior_logit": prior["logit"].numpy(), "wmstep/out/prior_stoch": prior["stoch"].numpy(),
                "wmstep/out/deter": post["deter"].numpy(), "wmstep/out/state": post["state"].numpy(),
                "wmstep/out/img_logit": img["logit"].numpy(), "wmstep/out/img_stoch": img["stoch"].numpy(),
                "wmstep/out/img_deter": img["deter"].numpy(), "wmstep/out/img_state": img["state"].numpy()})  # fmt: skip
    return out


def wm_goldens(mods, torch, rng, inject, image=False):
    """WorldModel._train on one batch: loss terms and gradients, actions as stored (original) and shifted by one.
    image: 64 x 64 x 3 observations through the CNN encoder / decoder (depth 2), actions as stored, and only the
    gradients of the encoder and decoder (the rest is the vector case)."""
    config = make_config(mods, HIEROS)
    key, prefix = ("image", "wm_image") if image else ("vector", "wm")
    if image:
        config.encoder.update(mlp_keys="$^", cnn_keys="image", cnn_depth=CNN_DEPTH)
        config.decoder.update(mlp_keys="$^", cnn_keys="image", cnn_depth=CNN_DEPTH)
    space = mods.embodied.Space
    shape = (64, 64, 3) if image else (OBS,)
    obs_space = {key: space(np.uint8 if image else np.float32, shape), "reward": space(np.float32),
                 "is_first": space(bool), "is_last": space(bool), "is_terminal": space(bool)}  # fmt: skip
    wm = mods.models.WorldModel(obs_space, {"action": space(np.float32, (ACT,))}, 0, config)
    perturb(wm, torch)
    named = dict(wm.named_parameters())
    names = list(named)
    out = params(prefix, wm)
    b, t = (2, 3) if image else (3, 8)
    is_first = resets(rng, b, t)
    is_terminal = np.zeros((b, t), bool)
    is_terminal[0, 2 if image else 5] = is_terminal[1, -1] = True
    obs = rng.integers(0, 256, (b, t, *shape)).astype(np.uint8) if image else 3 * rng.standard_normal((b, t, OBS))
    data = {key: obs.astype(np.uint8 if image else np.float32),
            "action": np.eye(ACT, dtype=np.float32)[rng.integers(0, ACT, (b, t))],
            "reward": rng.choice([0.0, 1.0, -0.5, 3.0], (b, t)).astype(np.float32),
            "is_first": is_first, "is_terminal": is_terminal}  # fmt: skip
    sample = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, (b, t, STOCH))]
    out.update({f"{prefix}/in/{k}": v for k, v in data.items()})
    out[f"{prefix}/in/post_sample"] = sample
    recorded = {}

    def record(loss, parameters):  # shim 3, in place of the optimizer step: the loss and the gradient of every parameter
        grads = torch.autograd.grad(loss, list(parameters), allow_unused=True)
        recorded["loss"], recorded["grads"] = loss.detach(), grads
        return {}

    wm._model_opt = record
    shifted = np.concatenate([0 * data["action"][:, :1], data["action"][:, :-1]], 1)
    for tag, action in (("orig", data["action"]),) + (() if image else (("shift", shifted),)):
        inject.queue = [sample]
        batch = {**data, "action": action, "subgoal": np.zeros((b, t, DETER), np.float32)}
        _, _, metrics = wm._train({k: torch.tensor(v) for k, v in batch.items()})  # copies: observe() masks in place
        assert not inject.queue, "the posterior sample was not drawn"
        for k in (f"{key}_loss", "reward_loss", "cont_loss", "dyn_loss", "rep_loss", "kl"):
            out[f"{prefix}/out_{tag}/{k}"] = np.asarray(metrics[k].detach().numpy(), np.float32)
        out[f"{prefix}/out_{tag}/model_loss"] = recorded["loss"].numpy()
        for name, g in zip(names, recorded["grads"], strict=True):
            if image and not name.startswith(("encoder.", "heads.decoder.")):
                continue
            out[f"{prefix}/grad_{tag}/{name}"] = (torch.zeros_like(named[name]) if g is None else g).numpy()
    return out


def subgoal_goldens(mods, torch, rng):
    """SubgoalAutoencoder (encode, decode, loss) and the subgoal / novelty rewards of SubActor."""
    config = make_config(mods, HIEROS)
    sc = config.subgoal_compression
    ae = mods.models.SubgoalAutoencoder(input_shape=[DETER], layers=sc["layers"], bottleneck_shape=list(CODE),
                                        activation=sc["act"], norm=sc["norm"], encoding_symlog=sc["encoding_symlog"],
                                        decoding_symlog=sc["decoding_symlog"], kl_scale=sc["kl_scale"],
                                        unimix_ratio=config.unimix_ratio, config=config)  # fmt: skip
    perturb(ae, torch)
    ae.eval()
    n = 12
    h = torch.as_tensor(3 * rng.standard_normal((n, DETER)), dtype=torch.float32)
    with torch.no_grad():
        code = ae.encode(h)  # (N, 8, 8) one-hot mode
        logits = ae._encoder(h).view(n, *CODE)
        decoded = ae.decode(code)
        rec, kl = ae.loss(h)
    out = params("ae", ae)
    out.update({"ae/in/h": h.numpy(), "ae/out/code": code.numpy(), "ae/out/logits": logits.numpy(),
                "ae/out/decoded": decoded.numpy(), "ae/out/rec_loss": rec.numpy(), "ae/out/kl_loss": kl.numpy()})  # fmt: skip
    # ---- rewards: imagined states (K, B*T) and the goals of the start states (B, T)
    k, b, t = 5, 2, 3
    deter = torch.as_tensor(2 * rng.standard_normal((k, b * t, DETER)), dtype=torch.float32)
    goal = torch.as_tensor(rng.standard_normal((b, t, DETER)), dtype=torch.float32)
    goal[0, 0] = torch.sign(deter[0, 0]) * torch.log1p(deter[0, 0].abs())  # reached exactly: reward symlog(1) = ln 2
    goal[0, 1] = -goal[0, 1].abs() * torch.sign(deter[0, 1])  # opposite signs everywhere at k = 0: clamped to 0
    sub = types.SimpleNamespace(_compute_subgoal=True, _compute_novelty=True, _config=config, subgoal_autoencoder=ae)
    sub.get_subgoal = types.MethodType(mods.hieros.SubActor.get_subgoal, sub)  # shim 4
    with torch.no_grad():
        r_goal = mods.hieros.SubActor._subgoal_reward(sub, {"deter": deter}, goal)
        r_nov = mods.hieros.SubActor._novelty_reward(sub, {"deter": deter})
    out.update({"rewards/in/deter": deter.numpy(), "rewards/in/goal": goal.numpy(),
                "rewards/out/subgoal": r_goal.numpy(), "rewards/out/novelty": r_nov.numpy()})  # fmt: skip
    return out


def behavior_goldens(mods, torch, rng):
    """One ImagBehavior._train of a middle level (all three reward heads, 8 x 8 code actor) on an injected imagined
    trajectory: lambda-returns, return EMA, the critic loss per head, the REINFORCE actor loss and their gradients."""
    config = make_config(mods, HIEROS)
    config.units = BEHAVIOR_UNITS  # narrower heads: the 255-bin critic outputs dominate the file
    config.num_actions, config.actor_dist, config.action_shape = CODE[0] * CODE[1], "onehot_categorical", CODE
    config.actor_entropy = lambda: 3e-4  # SubActor turns the schedule strings into these functions
    config.actor_state_entropy = lambda: 0.0
    space = mods.embodied.Space
    obs_space = {"vector": space(np.float32, (OBS,)), "reward": space(np.float32), "is_first": space(bool),
                 "is_last": space(bool), "is_terminal": space(bool)}  # fmt: skip
    wm = mods.models.WorldModel(obs_space, {"action": space(np.float32, (CODE[0] * CODE[1],))}, 0, config)
    beh = mods.models.ImagBehavior(config, wm, CODE[0] * CODE[1], True, use_subgoal=True, use_novelty=True)
    perturb(wm, torch)
    perturb(beh, torch)
    for head in beh._slow_values:  # a slow critic that differs from the critic
        perturb(beh._slow_values[head], torch)
    k, b, t = 6, 2, 3  # imag_horizon 6: the reference's _imagine gives K = 6 states s_0..s_5, trains 5 steps; N = 6
    n = b * t
    with torch.no_grad():
        logit = torch.randn(k, n, STOCH, CLASSES)
        state = {"stoch": torch.nn.functional.one_hot(logit.argmax(-1), CLASSES).float(), "logit": logit,
                 "deter": torch.randn(k, n, DETER)}  # fmt: skip
        state["entropy"] = wm.dynamics.get_dist(state).entropy()
        feat = wm.get_feat(state)  # [stoch, deter, symlog([reward mode, cont mean, entropy])]
        cont = wm.heads["cont"](wm.dynamics.get_feat(state)).mean  # (K, N, 1): the discount reads it
    action = torch.nn.functional.one_hot(torch.randint(0, CODE[1], (k, n, CODE[0])), CODE[1]).float().flatten(-2)
    code = torch.nn.functional.one_hot(torch.randint(0, CODE[1], (b, t, CODE[0])), CODE[1]).float()
    rewards = {"extrinsic": torch.randn(k, n, 1), "subgoal": torch.rand(k, n, 1) * 0.69, "novelty": torch.rand(k, n, 1)}
    beh._imagine = lambda start, policy, horizon, repeats=None: (feat, state, action)
    ema0 = {"extrinsic": (-5.0, 20.0), "subgoal": (0.1, 0.5), "novelty": (-3.0, 2.0)}  # a return EMA with history:
    for head, values in ema0.items():  # a return scale max(1, high - low) above 1 for two heads
        beh.reward_ema[head].values = torch.tensor(values)
    recorded = {}

    def recorder(name, module):
        def record(loss, parameters):  # in place of the optimizer step: the loss and its gradients
            recorded[name] = (loss.detach(), torch.autograd.grad(loss, list(module.parameters())))
            return {}

        return record

    beh._actor_opt = recorder("actor", beh.actor)
    beh._value_opts = {h: recorder(f"critic_{h}", beh._value_heads[h]) for h in beh._value_heads}
    _, _, _, _, metrics = beh._train({"encoded_subgoal": code}, lambda f, s, a: rewards)
    # after _train: the slow critics as they were used (mixed 2 % towards the critics); the world model (a submodule of
    # ImagBehavior) only with the reward and continue heads that the actor-critic features read
    out = {k: v for k, v in params("behavior", beh).items() if "/_world_model." not in k}
    out.update({k: v for k, v in params("behavior_wm", wm).items() if "/heads.reward." in k or "/heads.cont." in k})
    out.update({"behavior/in/stoch": state["stoch"].numpy(), "behavior/in/logit": logit.numpy(),
                "behavior/in/deter": state["deter"].numpy(), "behavior/in/action": action.numpy(),
                "behavior/in/code": code.numpy(), "behavior/in/cont": cont.numpy(),
                "behavior/out/feat": feat.numpy()})  # fmt: skip
    out.update({f"behavior/in/reward_{k}": v.numpy() for k, v in rewards.items()})
    out.update({f"behavior/in/ema_{k}": np.asarray(v, np.float32) for k, v in ema0.items()})
    for name, (loss, grads) in recorded.items():  # gradients under ImagBehavior's parameter names
        prefix = "actor." if name == "actor" else f"_value_heads.{name[len('critic_') :]}."
        module = beh.actor if name == "actor" else beh._value_heads[name[len("critic_") :]]
        out[f"behavior/out/{name}_loss"] = loss.numpy()
        for (pname, _), grad in zip(module.named_parameters(), grads, strict=True):
            out[f"behavior/grad/{prefix}{pname}"] = grad.numpy()
    for head in rewards:
        out[f"behavior/out/ema_low_{head}"] = metrics[f"EMA_005_{head}"].numpy()
        out[f"behavior/out/ema_high_{head}"] = metrics[f"EMA_095_{head}"].numpy()
    out["behavior/out/actor_entropy"] = metrics["actor_entropy"].numpy()
    return out


def etbs_goldens(mods, rng):
    """EfficientTimeBalanced: index for given uniform draws x ~ U[2, N + 2), and its pmf on a fine grid of x."""

    class Draws:  # the selector's rng: uniform() returns the given draws in order
        def __init__(self, x):
            self.x = list(x)

        def uniform(self, low, high):
            return self.x.pop(0)

    out = {}
    grid = 20000
    for n in (1, 2, 10, 100, 1000):
        for m_name, m in (("n", n), ("cap", CAPACITY)):
            for tau in (0.3, 1.0):
                sel = mods.selectors.EfficientTimeBalanced(seed=0, length=m, temperature=tau)
                for key in range(n):
                    sel[key] = None
                u = rng.random(500)
                x = 2.0 + u * n  # the draw U[2, N + 2) as a function of u ~ U[0, 1) (hieros_s5_torch.etbs_index)
                sel.rng = Draws(x)
                index = np.array([sel() for _ in x], np.int64)
                ug = (np.arange(grid) + 0.5) / grid  # midpoints: the empirical pmf is exact up to 1/grid per boundary
                sel.rng = Draws(2.0 + ug * n)
                pmf = np.bincount([sel() for _ in ug], minlength=n) / grid
                tag = f"etbs/n{n}_m{m_name}_tau{tau}"
                out.update({f"{tag}/u": u, f"{tag}/index": index, f"{tag}/pmf": pmf, f"{tag}/m": np.asarray(m, np.float64)})
    out["etbs/grid"] = np.asarray(grid)
    return out


CAPACITY = 1_000_000  # the replay capacity the original wires into ETBS as M (replay_size 1e6)
HIEROS = None  # the checkout path (set in main)


def main():
    global HIEROS
    args = parse_args()
    HIEROS = os.path.abspath(args.hieros)
    mods = import_hieros(HIEROS, args.deps)
    import torch

    torch.set_num_threads(1)  # bit-reproducible reductions
    torch.manual_seed(20251103)
    inject = InjectedSamples(mods.tools)  # shim 1
    mods.tools.TimeRecording = NoTimer  # shim 2
    rng = np.random.default_rng(20251103)
    save_npz(os.path.join(args.out, "parity_hieros_s5.npz"), s5_goldens(mods, torch, rng))
    save_npz(os.path.join(args.out, "parity_hieros_wm.npz"), wm_goldens(mods, torch, rng, inject))
    save_npz(os.path.join(args.out, "parity_hieros_wm_image.npz"), wm_goldens(mods, torch, rng, inject, image=True))
    save_npz(os.path.join(args.out, "parity_hieros_subgoal.npz"), subgoal_goldens(mods, torch, rng))
    save_npz(os.path.join(args.out, "parity_hieros_behavior.npz"), behavior_goldens(mods, torch, rng))
    save_npz(os.path.join(args.out, "parity_hieros_etbs.npz"), etbs_goldens(mods, rng))


if __name__ == "__main__":
    main()
