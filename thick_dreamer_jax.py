# docs and experiment results: docs/thick.md (THICK) on top of README.md (DreamerV3 section) and docs/dreamerv3.md
"""THICK Dreamer (Gumbsch et al., "Learning hierarchical world models with adaptive temporal abstractions from discrete
latent dynamics", ICLR 2024, OpenReview TjCDNssXKU) on top of DreamerV3 (Hafner et al., Nature 2025) in one JAX file.

    python thick_dreamer_jax.py --env-id crafter --sparse-scale 1.0      # Crafter, train ratio 512, model 12m
    python thick_dreamer_jax.py --env-id crafter --sparse-scale 1.0 --num-devices 4 --batch-size 64  # 4 GPUs, global batch 64
    python thick_dreamer_jax.py --env-id atari100k_pong --sparse-scale 10
    python thick_dreamer_jax.py --env-id CartPole-v1 --model-size 1m     # vector observations
    python thick_dreamer_jax.py --evaluate runs/<run>/thick_dreamer_jax.cleanrl_model --eval-episodes 10

THICK: this file is dreamerv3_jax.py plus blocks tagged "THICK:" / "ALGO LOGIC: THICK" (THIX below: the authors' code,
brahmasp/thix@a5054b4):
a C-RSSM (a GateL0RD context c that changes sparsely, fed into the GRU, the priors, the posterior and all heads; a
coarse prior, decoder, reward and continue head without h; a sparsity loss on the gate openings), a high-level model
that predicts the state, action, time and reward of the next context change, and the THICK Dreamer value: both critics
(fine v(h, z, c) and coarse v_c(z_c, c)) regress psi * lambda-return + (1 - psi) * V_long, where V_long comes from one
high-level step per imagined state. `diff dreamerv3_jax.py thick_dreamer_jax.py` shows exactly what THICK adds: the
tagged blocks, plus untagged lines that only thread the context c (and the coarse critic's slow copy) through carries,
signatures and replay.

This is the "v3-latest" agent of danijar/dreamerv3@e3f0224 (= arXiv 2301.04104v2 = the Nature paper): block-diagonal
GRU with RMSNorm, one LaProp optimizer with adaptive gradient clipping and warm-up, symexp two-hot reward/critic, replay
critic loss ("repval"), dynamics KL scale 1.0, and stored replay latents used as the start state of every training window
("replay context"). Flags reproduce the 2023 variant where it differs: --dyn-scale 0.5, --actor-unimix 0.01,
--replay-context 0.

File map (numbered sections):
  0. Arguments                      5. Optimizer: AGC + LaProp + warm-up
  1. Numeric helpers                6. Replay buffer with stored latents
  2. Layers                         7. The agent: observe, imagine, losses, one jitted train step, policy step
  3. World model networks           8. Checkpoints (state + replay as one unit), stop signals, evaluation
  4. Actor and critic heads         9. Progress lines and the main loop (CleanRL skeleton)
                                    Appendix: fast kernels (exact CPU forms of the convolutions and RMSNorm -> SiLU)
  3b. THICK: high-level model and target extraction
Shapes: B batch, T batch length, N = B*T imagination starts, H imagination horizon, D deter, S stoch latents,
K classes per latent, F = D + S*K + C features, A action dim, C context dim, NA high-level actions.
"""

import contextlib
import dataclasses
import functools
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import flax
import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

import common

# ======================================================================================================================
# 0. Arguments
# ======================================================================================================================


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (python, numpy, JAX and the environments)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanwm"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    save_model: bool = False
    """save the final model to runs/{run_name}/{exp_name}.cleanrl_model and evaluate it"""

    # Algorithm specific arguments
    env_id: Optional[str] = None
    """crafter, crafter_noreward, atari100k_<game> or any gymnasium id (default: crafter; with --evaluate: the env id
    saved in the file)"""
    total_timesteps: Optional[int] = None
    """env (policy) steps to run, summed over envs (default per env: Atari100k 110k as the official config, else 1.1M;
    Crafter is scored at 1M)"""
    num_envs: int = 1
    """the number of parallel environments"""
    model_size: str = "12m"
    """size preset: debug (tests), 1m, 12m, 25m, 50m, 100m, 200m, 400m (the official Crafter/Atari configs use 200m)"""
    train_ratio: Optional[float] = None
    """replayed steps per policy step; default per env: Crafter 512, Atari100k 256, other envs 512"""
    batch_size: int = 16
    """sequences per training batch"""
    batch_length: int = 64
    """steps per training sequence (one extra context step is sampled in front)"""
    learning_starts: Optional[int] = None
    """policy steps collected before the first update (default: (batch_size + num_envs) * batch_length, i.e. B * T
    window starts of T + 1 steps over all envs)"""
    compute_dtype: str = "float32"
    """float32 or bfloat16 (bfloat16 matmuls; norms, distributions and losses stay float32)"""
    num_devices: int = 1
    """devices that share each update (data parallel): the first N of jax.devices(); --batch-size is the global batch,
    split evenly over them; acting stays on the first device"""

    # world model
    dyn_scale: float = 1.0
    """scale of the dynamics KL (0.5 = the 2023 version)"""
    rep_scale: float = 0.1
    """scale of the representation KL"""
    free_nats: float = 1.0
    """free nats of each KL term (per step, summed over latents)"""
    latent_unimix: float = 0.01
    """uniform mixture of the categorical latents"""

    # actor and critic
    imag_horizon: int = 15
    """imagination horizon H"""
    horizon: int = 333
    """discount horizon: gamma = 1 - 1/horizon"""
    lam: float = 0.95
    """lambda of the lambda-returns"""
    actor_entropy: float = 3e-4
    """entropy regulariser of the actor"""
    actor_unimix: float = 0.0
    """uniform mixture of the discrete actor (0.0 = official HEAD behaviour, 0.01 = paper / 2023 version)"""
    slow_critic_mix: float = 0.02
    """EMA rate of the slow critic, mixed after every update"""
    slowreg: float = 1.0
    """scale of the critic's regulariser toward the slow critic"""
    repval_scale: float = 0.3
    """scale of the replay critic loss (0 disables it)"""
    reward_scale: float = 1.0
    """scale of the reward-head loss (the official loss_scales.rew; 10 tried for small models on Crafter:
    docs/notes/dreamerv3-crafter-cpu.md)"""

    # optimizer
    learning_rate: float = 4e-5
    """learning rate of the single LaProp optimizer"""
    actor_lr: Optional[float] = None
    """learning rate of the actor's parameters (default: --learning-rate; the 2023 paper: 3e-5 with a model lr of 1e-4)"""
    critic_lr: Optional[float] = None
    """learning rate of the critic's parameters (default: --learning-rate; the 2023 paper: 3e-5)"""
    opt_eps: float = 1e-20
    """epsilon of LaProp's RMS normalisation"""
    agc: float = 0.3
    """adaptive gradient clipping threshold (per parameter tensor, relative to its norm)"""
    warmup: int = 1000
    """linear learning-rate warm-up in updates"""

    # replay
    buffer_size: int = 1_000_000
    """replay capacity in steps, summed over envs (capped at total_timesteps)"""
    replay_context: int = 1
    """1: start every training window from the latents stored in replay; 0: from zeros (2023 version)"""

    # THICK: C-RSSM, high-level model, THICK Dreamer value
    sparse_scale: float = 1.0
    """beta_sparse, the weight of the sparsity loss on the context gates (tune it: see docs/thick.md)"""
    context_dim: int = 8
    """C, the context dimension (16 matches the original THICK)"""
    gate_noise: float = 0.1
    """sigma of the Gaussian noise on the gate pre-activations (on in every world-model pass)"""
    sparse_free: float = 1.0
    """free budget of context changes per sequence in the sparsity loss (hinge max(S_b, free) / T)"""
    hl_actions: int = 3
    """N_A, the number of categorical high-level actions"""
    psi: float = 0.9
    """weight of the lambda-return in the critic target psi * ret + (1 - psi) * V_long (1 = plain DreamerV3 critic)"""
    coarse_dec_scale: float = 2.0
    """scale of the coarse image/vector reconstruction loss (coarse reward: --reward-scale; coarse continue, dyn KL: 1)"""
    coarse_rep_scale: float = 0.1
    """scale of the coarse representation KL"""
    coarse_dec_depth: int = 0
    """CNN depth of the coarse image decoder (0 = the model's depth, as THIX; smaller is cheaper, e.g. depth / 2)"""
    hl_scale: float = 1.0
    """scale of every high-level loss term (z, a, delta, R, A-KL)"""
    eval_gate_noise: bool = True
    """keep the gate noise on in evaluation episodes (--no-eval-gate-noise turns it off there); --evaluate uses the value
    given on its own command line, not the one saved with the model"""

    # logging, checkpoints, evaluation
    log_every: int = 1000
    """progress line and TensorBoard scalars at every multiple of this many policy steps (and a progress line at least
    every 30 s)"""
    video_every: int = 10000
    """updates between open-loop prediction videos in TensorBoard (0 disables)"""
    checkpoint_every: int = 0
    """write the full training state to runs/{run_name}/checkpoint.ckpt at every multiple of N policy steps (0: only when
    stopped by SIGTERM or Ctrl-C)"""
    checkpoint_replay: bool = True
    """include the replay buffer in checkpoints, as runs/{run_name}/checkpoint.step{N}.replay.npz
    (1M Crafter steps of 64 x 64 x 3 bytes: about 12 GB)"""
    resume: Optional[str] = None
    """path of a runs/{run_name}/checkpoint.ckpt to continue from (same flags; the step counter continues and the run
    logs into that run directory)"""
    eval_episodes: int = 10
    """episodes of the evaluation after training (with --save-model) or with --evaluate"""
    evaluate: Optional[str] = None
    """path of a .cleanrl_model or checkpoint.ckpt: only evaluate it and exit (the env id is read from the file unless
    --env-id is given)"""


# Model-size presets (danijar/dreamerv3:dreamerv3/configs.yaml@e3f0224, size*): deter, hidden, classes per latent,
# CNN depth, MLP units; always 32 latents (debug: 8).
SIZES = {
    "debug": dict(deter=64, hidden=32, classes=4, depth=4, units=32, stoch=8),
    "1m": dict(deter=512, hidden=64, classes=4, depth=4, units=64, stoch=32),
    "12m": dict(deter=2048, hidden=256, classes=16, depth=16, units=256, stoch=32),
    "25m": dict(deter=3072, hidden=384, classes=24, depth=24, units=384, stoch=32),
    "50m": dict(deter=4096, hidden=512, classes=32, depth=32, units=512, stoch=32),
    "100m": dict(deter=6144, hidden=768, classes=48, depth=48, units=768, stoch=32),
    "200m": dict(deter=8192, hidden=1024, classes=64, depth=64, units=1024, stoch=32),
    "400m": dict(deter=12288, hidden=1536, classes=96, depth=96, units=1536, stoch=32),
}

# Flags that may differ between a checkpoint and the resuming run.
RESUME_FREE = {
    "exp_name", "track", "wandb_project_name", "wandb_entity", "capture_video", "save_model", "total_timesteps",
    "log_every", "video_every", "checkpoint_every", "checkpoint_replay", "resume", "eval_episodes", "evaluate", "num_devices",
    "eval_gate_noise",  # THICK
}  # fmt: skip


# A first look on a CPU: a CartPole recipe that learns, printed when a CPU run would take hours (one constant to update).
QUICK_START = (
    f"python {os.path.basename(__file__)} --env-id CartPole-v1 --model-size debug --batch-size 16 --batch-length 32 "
    "--train-ratio 256 --learning-rate 3e-4 --total-timesteps 15000"
)


class UsageError(Exception):
    """Bad input (or a directory that cannot be written): reported as one line on stderr with exit status 2."""


class Stopped(Exception):
    """SIGTERM or Ctrl-C: the run stops (after writing a checkpoint) with exit status 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def check_args(args: Args) -> Args:
    """Validate the flags and fill in per-env defaults; raises UsageError with a one-line message."""
    if args.evaluate:  # evaluation only: the model's own flags come from the file, the env id too unless given
        if args.eval_episodes < 1:
            raise UsageError(f"--eval-episodes must be >= 1 with --evaluate, got {args.eval_episodes}")
        if args.env_id is not None:
            common.check_env_id(args.env_id)
        return args
    args.env_id = "crafter" if args.env_id is None else args.env_id
    family = common.check_env_id(args.env_id)  # raises common.EnvIdError for an unknown id
    if args.model_size not in SIZES:
        raise UsageError(f"unknown --model-size '{args.model_size}'; choose one of {', '.join(SIZES)}")
    if args.compute_dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--compute-dtype must be float32 or bfloat16, got '{args.compute_dtype}'")
    if args.total_timesteps is None:
        args.total_timesteps = 110_000 if family == "atari100k" else 1_100_000
    for name in ("batch_size", "num_envs", "total_timesteps", "imag_horizon", "horizon", "log_every", "num_devices"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_length < 2:
        raise UsageError(f"--batch-length must be >= 2, got {args.batch_length}")
    devices = jax.device_count()  # on several hosts: all processes' devices (init_multihost)
    if args.batch_size % args.num_devices:
        raise UsageError(f"--batch-size {args.batch_size} (global) must be divisible by --num-devices {args.num_devices}")
    if args.num_devices > devices:
        raise UsageError(f"--num-devices {args.num_devices} exceeds the {devices} visible {jax.default_backend()} devices")
    if jax.process_count() > 1 and (args.num_devices != devices or args.resume):
        raise UsageError(
            f"a run of {jax.process_count()} processes shards over all their {devices} devices: pass --num-devices {devices} "
            "(and no --resume: each process checkpoints its own replay)"
        )
    if args.train_ratio is None:
        args.train_ratio = {"crafter": 512.0, "atari100k": 256.0}.get(family, 512.0)
    if args.train_ratio <= 0:
        raise UsageError(f"--train-ratio must be > 0, got {args.train_ratio}")
    if args.learning_starts is None:
        # B * T window starts: an env with S steps holds S - T windows of T + 1 steps, so B * T + N * T steps in all
        args.learning_starts = (args.batch_size + args.num_envs) * args.batch_length
    if args.total_timesteps < args.learning_starts:
        raise UsageError(
            f"--total-timesteps {args.total_timesteps} is below --learning-starts {args.learning_starts}, so no update would "
            f"run: raise --total-timesteps to at least {args.learning_starts}, or lower --learning-starts (default: (batch "
            "size + num envs) * batch length)"
        )
    capacity = min(args.buffer_size, args.total_timesteps + args.num_envs) // args.num_envs
    if capacity < args.batch_length + 1:
        raise UsageError(f"--buffer-size {args.buffer_size} holds {capacity} steps per env, fewer than --batch-length + 1")
    for name in ("learning_rate", "actor_lr", "critic_lr"):
        lr = getattr(args, name)
        if lr is not None and not lr > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {lr}")
    if not args.reward_scale >= 0:
        raise UsageError(f"--reward-scale must be >= 0, got {args.reward_scale}")
    if args.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be >= 0 (0: no evaluation after --save-model), got {args.eval_episodes}")
    if args.replay_context not in (0, 1):
        raise UsageError("--replay-context must be 0 or 1")
    if not 0 <= args.lam <= 1 or not 0 <= args.actor_unimix < 1 or not 0 <= args.latent_unimix < 1:
        raise UsageError("--lam, --actor-unimix and --latent-unimix must lie in [0, 1]")
    # THICK: flag checks
    if args.context_dim < 1 or args.hl_actions < 1:
        raise UsageError(f"--context-dim and --hl-actions must be >= 1, got {args.context_dim} and {args.hl_actions}")
    if not 0 <= args.psi <= 1:
        raise UsageError(f"--psi must lie in [0, 1], got {args.psi}")
    if args.gate_noise < 0 or args.sparse_scale < 0 or args.sparse_free < 0 or args.coarse_dec_depth < 0:
        raise UsageError("--gate-noise, --sparse-scale, --sparse-free and --coarse-dec-depth must be >= 0")
    return args


# ======================================================================================================================
# 1. Numeric helpers (each has a value test in tests/test_dreamerv3.py)
# ======================================================================================================================


def symlog(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))  # symlog(x) = sign(x) ln(1 + |x|)


def symexp(x):
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))  # symexp(y) = sign(y) (e^|y| - 1)


def twohot_bins(num: int = 255) -> jnp.ndarray:
    """symexp(linspace(-20, 0, 128)) mirrored around an exact 0: 255 bins in raw (reward or value) space."""
    half = np.linspace(-20.0, 0.0, (num + 1) // 2)  # computed in float64, then rounded once to float32
    half = np.sign(half) * np.expm1(np.abs(half))  # (128,), half[-1] == 0
    return np.concatenate([half, -half[:-1][::-1]]).astype(np.float32)  # (255,), antisymmetric


BINS = twohot_bins()  # a numpy constant; each jitted function embeds it


def bins():
    return jnp.asarray(BINS)


def twohot_encode(x, b):
    """Two-hot target of x (..., ) over bins b (K,): linear interpolation in raw space; beyond the ends -> end bin."""
    x = x.astype(jnp.float32)[..., None]
    below = jnp.sum(b <= x, -1) - 1  # index of the last bin <= x
    above = len(b) - jnp.sum(b > x, -1)  # index of the first bin > x
    below, above = jnp.clip(below, 0, len(b) - 1), jnp.clip(above, 0, len(b) - 1)
    equal = below == above
    x = x[..., 0]
    dist_below = jnp.where(equal, 1.0, jnp.abs(b[below] - x))
    dist_above = jnp.where(equal, 1.0, jnp.abs(b[above] - x))
    total = dist_below + dist_above
    return (
        jax.nn.one_hot(below, len(b)) * (dist_above / total)[..., None]  # weight of a bin = distance to the other
        + jax.nn.one_hot(above, len(b)) * (dist_below / total)[..., None]
    )


def twohot_mean(logits, b):
    """Prediction sum_i p_i b_i, summed symmetrically (mirrored pairs first) so uniform probabilities give exactly 0."""
    pb = jax.nn.softmax(logits.astype(jnp.float32), -1) * b  # (..., 255)
    m = len(b) // 2
    pairs = pb[..., :m][..., ::-1] + pb[..., m + 1 :]  # (p_{m-j} b_{m-j}) + (p_{m+j} b_{m+j}), j = 1..127
    return pairs.sum(-1) + pb[..., m]


def twohot_loss(logits, target, b):
    """Cross-entropy of the two-hot encoding of `target` against log_softmax(logits)."""
    return -jnp.sum(twohot_encode(target, b) * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)


def unimix_logits(logits, unimix: float):
    """log of p = (1 - unimix) softmax(logits) + unimix / K: a categorical that never becomes deterministic."""
    logits = logits.astype(jnp.float32)
    if unimix == 0:
        return jax.nn.log_softmax(logits, -1)
    probs = (1 - unimix) * jax.nn.softmax(logits, -1) + unimix / logits.shape[-1]
    return jnp.log(probs)


def sample_onehot(key, logits):
    """Straight-through one-hot sample: value = one-hot sample, gradient = that of the probabilities."""
    probs = jax.nn.softmax(logits, -1)
    onehot = jax.nn.one_hot(jax.random.categorical(key, logits, -1), logits.shape[-1], dtype=probs.dtype)
    return onehot + probs - jax.lax.stop_gradient(probs)


def categorical_kl(logits_p, logits_q):
    """KL[p || q] of per-latent categoricals (..., S, K), summed over the S latents."""
    p = jax.nn.softmax(logits_p, -1)
    return jnp.sum(p * (jax.nn.log_softmax(logits_p, -1) - jax.nn.log_softmax(logits_q, -1)), (-2, -1))


def categorical_entropy(logits):
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.sum(jnp.exp(logp) * logp, -1)


def lambda_return(rew, live, cont, boot):
    """Lambda-returns by a reverse scan, all inputs (N, L); returns R_0..R_{L-2}, shape (N, L-1).

        R_{L-1} = boot_{L-1}
        R_k     = rew_{k+1} + live_{k+1} * [ (1 - cont_{k+1}) * boot_{k+1} + cont_{k+1} * R_{k+1} ]
    live = discount of continuing (imagination: the continue probability; replay: gamma * (1 - is_terminal)),
    cont = lambda * (1 - is_last) (how much of the trace continues), boot = the value used for bootstrapping.
    """
    interm = rew[:, 1:] + live[:, 1:] * (1 - cont[:, 1:]) * boot[:, 1:]  # (N, L-1)

    def step(ret_next, inp):  # pipeline order: later step first
        interm_k, live_k, cont_k = inp
        ret = interm_k + live_k * cont_k * ret_next
        return ret, ret

    xs = (interm.T, live[:, 1:].T, cont[:, 1:].T)  # time-major (L-1, N)
    _, rets = jax.lax.scan(step, boot[:, -1], xs, reverse=True)
    return rets.T  # (N, L-1)


# THICK: GateL0RD gate algebra and the sparsity loss, always float32
def gate_math(s, r_pre, c_prev):
    """s: gate pre-activation (noise included), r_pre: candidate pre-activation, c_prev: c_{t-1}; all (..., C).

        Lambda = max(0, tanh s) in [0, 1)      c_t = Lambda * tanh(r_pre) + (1 - Lambda) * c_{t-1}   (closed gate: exact copy)
        Theta  = 1[Lambda > 0] forward, dTheta/dLambda = 1 backward (straight-through Heaviside)
    Returns (c_t, Theta, Lambda)."""
    s, r_pre, c_prev = s.astype(jnp.float32), r_pre.astype(jnp.float32), c_prev.astype(jnp.float32)
    lam = jnp.maximum(0.0, jnp.tanh(s))
    c_new = lam * jnp.tanh(r_pre) + (1.0 - lam) * c_prev
    theta = jax.lax.stop_gradient((lam > 0).astype(jnp.float32)) + (lam - jax.lax.stop_gradient(lam))  # exactly 0 / 1
    return c_new, theta, lam


def sparse_loss(theta, sparse_free: float):
    """THIX's hinged L0 loss: S_b = sum_t mean_i Theta_{b,t,i}; L = mean_b max(S_b, sparse_free) / T. theta: (B, T, C)."""
    s_b = jnp.sum(jnp.mean(theta, -1), -1)
    return jnp.mean(jnp.maximum(s_b, sparse_free)) / theta.shape[1]


def long_value(r_hat, delta_hat, con_c, v_c, gamma: float):
    """THICK Dreamer's long-horizon value: V_long = R_hat + gamma^Delta_hat * con_c * v_c, where
    R_hat = sum_{j=t+1}^{tau} gamma^(j-t-1) r_j, Delta_hat = tau - 1 - t and con_c ~ gamma * cont at tau."""
    return r_hat + gamma**delta_hat * con_c * v_c


def mixed_target(ret, v_long, psi: float, mask_sum):
    """Critic target psi * ret + (1 - psi) * sg(V_long); psi = 1 (pure lambda-return) when the batch has no change
    events (mask_sum = 0), since the high-level model then had nothing to learn from. Returns (target, fallback)."""
    fallback = mask_sum <= 0
    return jnp.where(fallback, ret, psi * ret + (1 - psi) * jax.lax.stop_gradient(v_long)), fallback


def percentile_update(lo_hi, ret, rate: float = 0.01, perclo: float = 5.0, perchi: float = 95.0):
    """Return-scale EMA: lo <- (1-rate) lo + rate P5(R), hi likewise with P95; scale S = max(1, hi - lo)."""
    lo = (1 - rate) * lo_hi[0] + rate * jnp.percentile(ret, perclo)
    hi = (1 - rate) * lo_hi[1] + rate * jnp.percentile(ret, perchi)
    return jnp.stack([lo, hi]), jnp.maximum(1.0, hi - lo)


# ======================================================================================================================
# 2. Layers: Linear, BlockLinear, Conv (truncated-normal fan-in init), NormSiLU; block order Linear -> RMSNorm -> SiLU
# ======================================================================================================================


def trunc_normal(outscale: float = 1.0):
    """Truncated normal on [-2, 2] times 1.1368 (undoes the truncation's std) times sqrt(1 / fan_in).

    fan_in = product of all kernel axes but the last: Linear (in, out) -> in; Conv (k, k, cin, cout) -> k*k*cin;
    BlockLinear (g, in/g, out/g) -> in, the full input width. outscale 0 gives an all-zero kernel.
    """

    def init(key, shape, dtype=jnp.float32):
        if outscale == 0.0:
            return jnp.zeros(shape, dtype)
        fan_in = int(np.prod(shape[:-1]))
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * 1.1368 * outscale / np.sqrt(fan_in)

    return init


class Linear(nn.Module):
    units: int
    outscale: float = 1.0
    dtype: Any = jnp.float32
    precision: Any = None  # THICK: HIGHEST for the gate cell (a float32 matmul may run in TF32 on GPUs otherwise)

    @nn.compact
    def __call__(self, x):  # (..., in) -> (..., units)
        kernel = self.param("kernel", trunc_normal(self.outscale), (x.shape[-1], self.units))
        bias = self.param("bias", nn.initializers.zeros, (self.units,))
        y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype), precision=self.precision)
        return y + bias.astype(self.dtype)


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: input split into `blocks` contiguous groups, each mapped by its own matrix."""

    units: int
    blocks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (..., in) -> (..., units)
        g = self.blocks
        kernel = self.param("kernel", trunc_normal(), (g, x.shape[-1] // g, self.units // g))
        bias = self.param("bias", nn.initializers.zeros, (self.units,))
        x = x.reshape(*x.shape[:-1], g, x.shape[-1] // g).astype(self.dtype)  # (..., g, in/g)
        y = jnp.einsum("...gi,gio->...go", x, kernel.astype(self.dtype))  # (..., g, units/g)
        return y.reshape(*y.shape[:-2], self.units) + bias.astype(self.dtype)


class Conv(nn.Module):
    """5x5 stride-1 'SAME' convolution with bias, NHWC; mode 'pool' adds a 2x2 max-pool after it (encoder), 'up' a
    nearest 2x upsampling before it (decoder): plainly maxpool2(conv(x) + bias) and conv(upsample2(x)) + bias, computed
    by the exact reformulations of the appendix (conv5x5_maxpool, upsample_conv5x5)."""

    channels: int
    mode: str  # "pool" or "up"
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (N, H, W, Cin) -> (N, H', W', channels)
        k = self.param("kernel", trunc_normal(self.outscale), (5, 5, x.shape[-1], self.channels))
        bias = self.param("bias", nn.initializers.zeros, (self.channels,))
        x = x.astype(self.dtype)
        if self.mode == "pool":
            return conv5x5_maxpool(x, k, bias)
        return upsample_conv5x5(x, k, bias)


class NormSiLU(nn.Module):
    """RMSNorm then SiLU: silu(x * rsqrt(mean(x^2) + 1e-4) * scale) over the last axis, in float32 (learned scale, no
    shift); every norm in these networks is followed by SiLU, so the two are one function (rmsnorm_silu, appendix)."""

    eps: float = 1e-4

    @nn.compact
    def __call__(self, x):
        return rmsnorm_silu(x, self.param("scale", nn.initializers.ones, (x.shape[-1],)), self.eps)


class NormAct(nn.Module):
    """Linear -> RMSNorm -> SiLU, the building block of every MLP."""

    units: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return NormSiLU()(Linear(self.units, dtype=self.dtype)(x))


class MLPHead(nn.Module):
    """`layers` x [Linear -> RMSNorm -> SiLU], then a Linear output with `outscale` (0 = zero-initialised). With `outputs`
    named, one output Linear of width `out` per name, concatenated on the last axis: separate parameter tensors, which
    the per-tensor AGC of section 5 clips separately (the continuous actor's "mean" and "stddev", as in the reference)."""

    layers: int
    units: int
    out: int
    outscale: float = 1.0
    dtype: Any = jnp.float32
    outputs: tuple = ()  # () = one output layer (auto-named Linear_0)

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = NormAct(self.units, self.dtype)(x)
        if not self.outputs:
            return Linear(self.out, self.outscale, self.dtype)(x).astype(jnp.float32)
        outs = [Linear(self.out, self.outscale, self.dtype, name=name)(x) for name in self.outputs]
        return jnp.concatenate(outs, -1).astype(jnp.float32)  # (..., len(outputs) * out)


def maxpool2(x):  # (N, H, W, C) -> (N, H/2, W/2, C)
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def upsample2(x):  # nearest neighbour, (N, H, W, C) -> (N, 2H, 2W, C)
    return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)


# ======================================================================================================================
# 3. World model networks (danijar/dreamerv3:dreamerv3/rssm.py@e3f0224)
# ======================================================================================================================


class Encoder(nn.Module):
    """Image: 4 x [Conv5x5 -> 2x2 max-pool -> RMSNorm -> SiLU], channels depth*(2,3,4,4), 64x64 -> 4x4, flattened.
    Vector: symlog, then 3 x [Linear -> RMSNorm -> SiLU]."""

    depth: int
    units: int
    image: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs):  # (..., H, W, C) uint8 or (..., obs_dim) -> (..., E)
        if not self.image:
            x = symlog(obs.astype(jnp.float32))
            for _ in range(3):
                x = NormAct(self.units, self.dtype)(x)
            return x
        lead = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).astype(jnp.float32) / 255.0 - 0.5  # (N, 64, 64, 3) in [-0.5, 0.5]
        for mult in (2, 3, 4, 4):  # Conv5x5 -> max-pool 2 -> RMSNorm -> SiLU: 64 -> 32 -> 16 -> 8 -> 4
            x = NormSiLU()(Conv(self.depth * mult, mode="pool", dtype=self.dtype)(x))
        return x.reshape(*lead, -1)  # (..., 4*4*4*depth)


class RSSM(nn.Module):
    """Recurrent state-space model with a block-diagonal GRU core. State: deter h (D,) and stoch z (S, K).
    THICK: C-RSSM: a context c (C,) from a GateL0RD cell, updated from (z_{t-1}, a_{t-1}, c_{t-1})
    before the GRU and fed into the GRU (a 4th embedding), the fine prior and the posterior; a coarse prior without h."""

    deter: int
    hidden: int
    stoch: int
    classes: int
    blocks: int = 8
    unimix: float = 0.01
    dtype: Any = jnp.float32
    context: int = 8  # THICK: C
    gate_noise: float = 0.1  # THICK: sigma

    def setup(self):
        d, g = self.dtype, self.blocks
        self.embed_h, self.embed_z, self.embed_a = NormAct(self.hidden, d), NormAct(self.hidden, d), NormAct(self.hidden, d)
        self.core_hidden, self.core_norm = BlockLinear(self.deter, g, d), NormSiLU()
        self.core_gates = BlockLinear(3 * self.deter, g, d)
        self.prior_layers = [NormAct(self.hidden, d), NormAct(self.hidden, d)]
        self.prior_out = Linear(self.stoch * self.classes, dtype=d)
        self.post_layer = NormAct(self.hidden, d)
        self.post_out = Linear(self.stoch * self.classes, dtype=d)
        # THICK: GateL0RD cell (one float32 Linear, [gate | candidate]), context embedding, coarse prior. Init: fan_in like
        # every layer here; THIX's cell uses fan_avg (brahmasp/thix:dreamerv3/nets/gatel0rd.py@a5054b4, winit normal, fan
        # avg), so its std is sqrt(fan_in / fan_avg) = sqrt(2 (2 hidden + C) / (2 hidden + 3 C)) times ours (C = 8: 1.34 at
        # 1m, 1.39 at 12m)
        self.gate = Linear(2 * self.context, dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
        self.embed_c = NormAct(self.hidden, d)
        self.coarse_layer = NormAct(self.hidden, d)
        self.coarse_out = Linear(self.stoch * self.classes, dtype=d)

    def __call__(self, h, z, a, embed, c):  # only used to create all parameters at init
        c, _, _, ez, ea = self.context_step(z, a, c, jax.random.PRNGKey(0))
        h = self.core(h, ez, ea, c)
        return self.prior(h, c), self.posterior(h, c, embed), self.coarse_prior(c, ez, ea)

    def embed_za(self, z, a):
        """Embeddings of z_{t-1} and a_{t-1}, shared by the context cell, the GRU and the coarse prior."""
        a = a / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(a)))  # clip continuous actions to |a| <= 1
        return self.embed_z(z.reshape(*z.shape[:-2], -1)), self.embed_a(a)

    def context_step(self, z, a, c, key, noise=1.0):
        """THICK: c_t = GateL0RD([emb z_{t-1}, emb a_{t-1}], c_{t-1}) in float32;
        noise scales sigma (0 = off). Returns (c_t, Theta_t, Lambda_t, emb z, emb a); c_t depends on (z_{t-1}, a_{t-1},
        c_{t-1}) only."""
        ez, ea = self.embed_za(z, a)
        s, r_pre = jnp.split(self.gate(jnp.concatenate([ez.astype(jnp.float32), ea.astype(jnp.float32), c], -1)), 2, -1)
        s = s + noise * self.gate_noise * jax.random.normal(key, s.shape, jnp.float32)
        c, theta, lam = gate_math(s, r_pre, c)
        return c, theta, lam, ez, ea

    def core(self, h, ez, ea, c):
        """h_t = core(h_{t-1}, z_{t-1}, a_{t-1}, c_t) from the embeddings of z_{t-1}, a_{t-1}: (..., D) -> (..., D)."""
        g, dg = self.blocks, self.deter // self.blocks
        x = jnp.concatenate([self.embed_h(h), ez, ea, self.embed_c(c)], -1)  # THICK: + embedding of c_t
        x = jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], g, x.shape[-1]))  # (..., g, 4*hidden): copy per group
        x = jnp.concatenate([h.reshape(*h.shape[:-1], g, dg).astype(x.dtype), x], -1)  # group k: [h_k, embeddings]
        x = self.core_norm(self.core_hidden(x.reshape(*x.shape[:-2], -1)))  # (..., D), RMSNorm -> SiLU
        gates = self.core_gates(x).astype(jnp.float32).reshape(*x.shape[:-1], g, 3, dg)  # per group [reset|cand|update]
        reset, cand, update = [gates[..., i, :].reshape(*x.shape[:-1], self.deter) for i in range(3)]
        reset = jax.nn.sigmoid(reset)  # r = sigmoid(reset)
        cand = jnp.tanh(reset * cand)  # c = tanh(r * cand)
        update = jax.nn.sigmoid(update - 1)  # u = sigmoid(update - 1)
        return update * cand + (1 - update) * h.astype(jnp.float32)  # h_t = u c + (1 - u) h_{t-1}, float32

    def prior(self, h, c):
        """p(z_t | h_t, c_t): (..., D), (..., C) -> unimix log-probs (..., S, K)."""
        x = jnp.concatenate([h.astype(self.dtype), c.astype(self.dtype)], -1)  # THICK: + c_t
        for layer in self.prior_layers:
            x = layer(x)
        return unimix_logits(self.prior_out(x).reshape(*h.shape[:-1], self.stoch, self.classes), self.unimix)

    def posterior(self, h, c, embed):
        """q(z_t | h_t, c_t, e_t): (..., D), (..., C), (..., E) -> unimix log-probs (..., S, K)."""
        x = self.post_layer(jnp.concatenate([h.astype(self.dtype), c.astype(self.dtype), embed.astype(self.dtype)], -1))
        return unimix_logits(self.post_out(x).reshape(*h.shape[:-1], self.stoch, self.classes), self.unimix)

    def coarse_prior(self, c, ez, ea):
        """THICK: p_c(z_t | c_t, z_{t-1}, a_{t-1}), no h:
        one hidden layer on [c_t, emb z_{t-1}, emb a_{t-1}]."""
        x = self.coarse_layer(jnp.concatenate([c.astype(self.dtype), ez, ea], -1))
        return unimix_logits(self.coarse_out(x).reshape(*c.shape[:-1], self.stoch, self.classes), self.unimix)


class Decoder(nn.Module):
    """Image: h -> BlockLinear to a 4x4xC map (block k = channels k*C/8 ..), z -> MLP -> 4x4xC; their sum
    -> RMSNorm -> SiLU; 3 x [upsample -> Conv5x5 -> RMSNorm -> SiLU] with C = 4d, 3d, 2d; upsample -> Conv5x5 ->
    sigmoid, 4 -> 8 -> 16 -> 32 -> 64. Vector: 3 x [Linear -> RMSNorm -> SiLU] on [z, h] -> prediction of symlog(x).
    THICK: the fine decoder's z branch takes [z, c] (the fine heads see [h, z, c]); the coarse decoder is
    this module with c in place of h, a single block and no ctx."""

    depth: int
    units: int
    out_shape: tuple
    image: bool
    blocks: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, z, ctx=None):  # (..., D), (..., S, K), (..., C) or None -> (..., *out_shape)
        lead, zf = h.shape[:-1], z.reshape(*z.shape[:-2], -1)
        if ctx is not None:  # THICK: the fine decoder also sees c_t (fine heads on [h, z, c]); it joins z's branch
            zf = jnp.concatenate([zf, ctx.astype(zf.dtype)], -1)
        if not self.image:
            x = jnp.concatenate([zf.astype(self.dtype), h.astype(self.dtype)], -1)
            for _ in range(3):
                x = NormAct(self.units, self.dtype)(x)
            return Linear(self.out_shape[0], dtype=self.dtype)(x).astype(jnp.float32)
        c, g, sp = 4 * self.depth, self.blocks, self.out_shape[0] // 16  # channels, blocks, start resolution (4)
        x0 = BlockLinear(sp * sp * c, g, self.dtype)(h).reshape(*lead, g, sp, sp, c // g)
        x0 = jnp.moveaxis(x0, -4, -2).reshape(*lead, sp, sp, c)  # channel index = k * C/8 + c'
        x1 = Linear(sp * sp * c, dtype=self.dtype)(NormAct(2 * self.units, self.dtype)(zf)).reshape(*lead, sp, sp, c)
        x = NormSiLU()(x0 + x1).reshape(-1, sp, sp, c)  # (N, 4, 4, 4d)
        for mult in (4, 3, 2):  # upsample -> Conv5x5 -> RMSNorm -> SiLU: 4 -> 8 -> 16 -> 32
            x = NormSiLU()(Conv(self.depth * mult, mode="up", dtype=self.dtype)(x))
        x = Conv(self.out_shape[-1], mode="up", dtype=self.dtype)(x)  # (N, 64, 64, 3)
        return jax.nn.sigmoid(x.astype(jnp.float32)).reshape(*lead, *self.out_shape)  # in [0, 1]


# ======================================================================================================================
# 3b. THICK: high-level model and its targets
# ======================================================================================================================


# ALGO LOGIC: THICK
def extract_targets(ev, first, logits, stoch, ctx, act, rew, gamma: float):
    """High-level targets by a reverse lax.scan over time. For every step t of a window:
    tau(t) = min{j > t : ev_j} (ev = any gate open | is_terminal), invalid if an is_first lies in (t, tau] or no event
    follows inside the window. ev, first, rew: (B, T); logits (B, T, S, K); stoch (B, T, S*K); ctx (B, T, C); act (B, T, A).
    Returns (B, T, ...) arrays: mask, delta = tau - 1 - t, z = logits[tau - 1], a = act[tau - 1],
    R = sum_{j=t+1}^{tau} gamma^(j-t-1) r_j, c_next = ctx[tau], z_prev = stoch[tau - 1]; zeros where invalid."""
    tm = lambda x: jnp.swapaxes(x, 0, 1)  # batch-major <-> time-major
    bsz = ev.shape[0]
    xs = {
        "first": tm(first[:, 1:].astype(bool)),
        "ev": tm(ev[:, 1:].astype(bool)),
        "R": tm(rew[:, 1:].astype(jnp.float32)),
        "c_next": tm(ctx[:, 1:].astype(jnp.float32)),
        "z": tm(logits[:, :-1].astype(jnp.float32)),
        "a": tm(act[:, :-1].astype(jnp.float32)),
        "z_prev": tm(stoch[:, :-1].astype(jnp.float32)),
    }  # step j = t+1 / t
    zero = {
        "valid": jnp.zeros((bsz,), bool),
        "delta": jnp.zeros((bsz,)),
        "R": jnp.zeros((bsz,)),
        **{k: jnp.zeros_like(xs[k][0]) for k in ("z", "a", "c_next", "z_prev")},
    }

    def step(carry, x):
        new = {"valid": jnp.ones((bsz,), bool), "delta": jnp.zeros((bsz,))}  # an event at j: tau = j
        new |= {k: x[k] for k in ("R", "z", "a", "c_next", "z_prev")}
        cont = carry | {"delta": carry["delta"] + 1, "R": x["R"] + gamma * carry["R"]}  # no event at j: extend
        out = {}
        for k in zero:
            bc = lambda v: v.reshape((bsz,) + (1,) * (zero[k].ndim - 1))
            out[k] = jnp.where(bc(x["first"]), zero[k], jnp.where(bc(x["ev"]), new[k], cont[k]))  # never across is_first
        return out, out

    _, outs = jax.lax.scan(step, zero, xs, reverse=True)
    outs = {k: jnp.concatenate([tm(v), zero[k][:, None]], 1) for k, v in outs.items()}  # the last step has no target
    valid = outs.pop("valid")
    outs = {k: jnp.where(valid.reshape(valid.shape + (1,) * (v.ndim - 2)), v, 0.0) for k, v in outs.items()}  # zeros
    return outs | {"mask": valid.astype(jnp.float32)}


class HighLevelModel(nn.Module):
    """THICK high-level model: independent 2-layer MLPs (THIX layout, width = units) on the stop-gradient
    input u = [flat z_t, c_t] and a one-hot high-level action A. Prior p(A | u), posterior q(A | u, c_tau, z_{tau-1});
    heads for z_{tau-1} (S x K logits), a_{tau-1} (actor-style distribution), Delta (MSE) and R (symexp two-hot)."""

    stoch: int
    classes: int
    act_out: int  # A (discrete) or 2A (continuous: mean and std)
    hl_actions: int
    units: int
    unimix: float = 0.01
    dtype: Any = jnp.float32

    def setup(self):
        mlp = lambda out, outscale=1.0: MLPHead(2, self.units, out, outscale, self.dtype)
        self.prior, self.post = mlp(self.hl_actions), mlp(self.hl_actions)
        self.state, self.action = mlp(self.stoch * self.classes), mlp(self.act_out)
        self.time, self.reward = mlp(1), mlp(255, 0.0)

    def __call__(self, u, c_next, z_prev, key):
        """Training pass with A ~ q(A | u, c_tau, z_{tau-1}) as a straight-through one-hot sample (our choice).
        Returns the heads' outputs and the prior / posterior log-probs."""
        lp, lq = self.prior_logp(u), jax.nn.log_softmax(self.post(jnp.concatenate([u, c_next, z_prev], -1)), -1)
        return self.heads(u, sample_onehot(key, lq)), lp, lq

    def prior_logp(self, u):
        return jax.nn.log_softmax(self.prior(u), -1)

    def heads(self, u, A):
        x = jnp.concatenate([u, A.astype(u.dtype)], -1)
        z = unimix_logits(self.state(x).reshape(*x.shape[:-1], self.stoch, self.classes), self.unimix)
        return {"z": z, "a": self.action(x), "delta": self.time(x)[..., 0], "R": self.reward(x)}


# ======================================================================================================================
# 4. Actor and critic heads
# ======================================================================================================================


def actor_dist(out, discrete: bool, unimix: float):
    """Actor output -> (sample_fn, logp_fn, entropy). Discrete: categorical over logits (optional unimix).
    Continuous ('bounded normal'): mean = tanh(m), std = 0.9 sigmoid(s + 2) + 0.1; log-prob and entropy summed."""
    if discrete:
        logits = unimix_logits(out, unimix)  # (..., A) log-probs
        sample = lambda key: jax.nn.one_hot(jax.random.categorical(key, logits, -1), logits.shape[-1])
        logp = lambda a: jnp.sum(a * logits, -1)
        return sample, logp, categorical_entropy(logits)
    mean, std = jnp.split(out, 2, -1)
    mean, std = jnp.tanh(mean), 0.9 * jax.nn.sigmoid(std + 2.0) + 0.1  # (..., A) each
    sample = lambda key: mean + std * jax.random.normal(key, mean.shape)
    logp = lambda a: jnp.sum(-0.5 * ((a - mean) / std) ** 2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi), -1)
    entropy = jnp.sum(0.5 + 0.5 * jnp.log(2 * jnp.pi) + jnp.log(std), -1)
    return sample, logp, entropy


# ======================================================================================================================
# 5. Optimizer: adaptive gradient clipping -> LaProp (RMS-normalise, then momentum) -> linear warm-up
# ======================================================================================================================


def agc_clip(g, p, agc: float, pmin: float = 1e-3):
    """Adaptive gradient clipping of one tensor: g / max(1, ||g|| / (agc * max(pmin, ||p||)))."""
    limit = agc * jnp.maximum(pmin, jnp.linalg.norm(p.ravel()))
    return g / jnp.maximum(1.0, jnp.linalg.norm(g.ravel()) / limit)


class LaPropState(flax.struct.PyTreeNode):
    count: jnp.ndarray  # updates so far
    nu: Any  # EMA of g^2
    mu: Any  # EMA of the normalised update


def laprop(lr: float, eps: float, agc: float, warmup: int, beta1: float = 0.9, beta2: float = 0.999, pmin: float = 1e-3,
           group_lr: Optional[dict] = None):
    """One optax transformation for the whole agent. `group_lr` overrides lr for top-level parameter groups, e.g.
    {"actor": 3e-5} (optional; v3-latest uses one lr for everything, the 2023 paper used separate optimizers).

    AGC (per tensor):  g <- g / max(1, ||g|| / (agc * max(pmin, ||theta||)))
    RMS:               nu <- b2 nu + (1 - b2) g^2,      u = g / (sqrt(nu / (1 - b2^n)) + eps)
    momentum:          mu <- b1 mu + (1 - b1) u,        step = mu / (1 - b1^n)
    warm-up:           theta <- theta - lr * min(n - 1, warmup) / warmup * step   (update 0 uses lr 0)
    """

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # two separate trees (both are donated)
        return LaPropState(count=jnp.zeros((), jnp.int32), nu=zeros(), mu=zeros())

    def update(grads, state, params):
        grads = jax.tree.map(lambda g, p: agc_clip(g, p, agc, pmin), grads, params)
        n = state.count + 1
        nu = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, state.nu, grads)
        u = jax.tree.map(lambda g, v: g / (jnp.sqrt(v / (1 - beta2**n)) + eps), grads, nu)
        mu = jax.tree.map(lambda m, x: beta1 * m + (1 - beta1) * x, state.mu, u)
        ramp = jnp.minimum(state.count, warmup) / warmup if warmup > 0 else 1.0
        lrs = {k: (group_lr or {}).get(k, lr) for k in mu}  # the agent's parameters are a dict of modules
        step = lambda r, sub: jax.tree.map(lambda m: -r * ramp * m / (1 - beta1**n), sub)  # one lr per group
        updates = jax.tree.map(step, lrs, mu)  # lrs: a prefix tree of mu
        return updates, LaPropState(count=n, nu=nu, mu=mu)

    return optax.GradientTransformation(init, update)


def learning_rate_at(args: Args, update: int) -> float:
    return args.learning_rate * min(update, args.warmup) / args.warmup if args.warmup > 0 else args.learning_rate


def updates_due(global_step: int, sched_prev: float | None, ratio: float) -> tuple[int, float]:
    """Train-ratio scheduler: how many updates are due at `global_step`, and the new scheduler position.
    ratio = train_ratio / (B * T) updates per policy step. The first call (sched_prev None) returns exactly 1; after it,
    due = floor((step - prev) * ratio) and prev advances by due / ratio, so the fractional part carries over and the
    updates per policy step average to `ratio`."""
    if sched_prev is None:
        return 1, float(global_step)
    due = int((global_step - sched_prev) * ratio)
    return due, sched_prev + due / ratio


# ======================================================================================================================
# 6. Replay buffer: one FIFO stream per env; windows of T + 1 steps; latents stored next to the observations
# ======================================================================================================================


class Replay:
    """Stores per env the stream (obs_t, a_t, r_t, is_first_t, is_last_t, is_terminal_t, h_t, z_t), where a_t is the
    action chosen after seeing obs_t, r_t the reward received on arriving at obs_t, and (h_t, z_t) the posterior the
    actor computed at obs_t. A sample is a window of T + 1 consecutive steps of one env (it may cross episode
    boundaries; is_first handles them). Step 0 of the window is only context. Uniform over all window starts, with
    every fresh non-overlapping window queued once and served first ("online" queue). h is stored as float16 and z as
    class indices (uint8) to save memory. THICK: the context c_t is stored next to them in float32."""

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        length: int,
        obs_space,
        act_dim: int,
        deter: int,
        stoch: int,
        seed: int,
        context: int = 8,
    ):
        e, c = num_envs, capacity
        self.capacity, self.length, self.num_envs = c, length, e
        spec = {  # name: (shape of one step, dtype)
            "obs": (obs_space.shape, np.uint8 if obs_space.dtype == np.uint8 else np.float32),
            "action": ((act_dim,), np.float32),
            "reward": ((), np.float32),
            "is_first": ((), bool),
            "is_last": ((), bool),
            "is_terminal": ((), bool),
            "deter": ((deter,), np.float16),
            "stoch": ((stoch,), np.uint8),
            "context": ((context,), np.float32),  # THICK
        }
        step_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
        check_memory(e * c, step_bytes)  # np.zeros only maps pages when they are written: check the RAM up front
        self.data = {k: np.zeros((e, c, *shape), dtype) for k, (shape, dtype) in spec.items()}
        self.pos = np.zeros(e, np.int64)  # next write index per env
        self.count = np.zeros(e, np.int64)  # steps ever written per env
        self.queue = deque()  # fresh windows (env, start)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return int(np.minimum(self.count, self.capacity).sum())

    def add(self, step: dict):
        """Append one step for every env; `step` maps each key to an array with leading axis num_envs."""
        envs = np.arange(self.num_envs)
        for k, v in step.items():
            self.data[k][envs, self.pos] = v
        self.pos = (self.pos + 1) % self.capacity
        self.count += 1
        for e in envs:  # queue each new non-overlapping window once (by its absolute start step)
            if self.count[e] >= self.length and self.count[e] % self.length == 0:
                self.queue.append((e, self.count[e] - self.length))

    def ready(self) -> bool:
        return bool(np.all(self.count >= self.length))

    def sample(self, batch: int):
        """Return (arrays of shape (B, T+1, ...), env index (B,), time index (B, T+1))."""
        starts = np.zeros(batch, np.int64)
        env = np.zeros(batch, np.int64)
        valid = np.minimum(self.count, self.capacity) - self.length + 1  # window starts per env
        while self.queue and self.queue[0][1] < self.count[self.queue[0][0]] - self.capacity:
            self.queue.popleft()  # drop queued windows that have been overwritten since
        for b in range(batch):
            if self.queue:
                env[b], start = self.queue.popleft()
                starts[b] = start % self.capacity
            else:
                env[b] = self.rng.choice(self.num_envs, p=valid / valid.sum())
                oldest = (self.pos[env[b]] - min(self.count[env[b]], self.capacity)) % self.capacity
                starts[b] = (oldest + self.rng.integers(valid[env[b]])) % self.capacity
        index = (starts[:, None] + np.arange(self.length)) % self.capacity  # (B, T+1)
        batch_data = {k: v[env[:, None], index] for k, v in self.data.items()}
        # a step followed by an episode start is a last step, also where the stream was cut without one: the
        # last step stored before a --resume (the envs restart then)
        batch_data["is_last"] = batch_data["is_last"] | np.pad(batch_data["is_first"][:, 1:], ((0, 0), (0, 1)))
        return batch_data, env, index

    def write_latents(self, env, index, deter, stoch, context):
        """Write the refreshed posteriors of the trained steps (window steps 1..T) back into the replay."""
        self.data["deter"][env[:, None], index] = deter
        self.data["stoch"][env[:, None], index] = stoch
        self.data["context"][env[:, None], index] = context  # THICK

    def state_dict(self) -> dict:
        filled = int(min(self.count.max(), self.capacity))  # only the written prefix (the envs step in lockstep)
        return {
            "data": {k: v[:, :filled] for k, v in self.data.items()},
            "capacity": np.int64(self.capacity),
            "pos": self.pos,
            "count": self.count,
            "queue": np.array(self.queue, np.int64).reshape(-1, 2),
            "rng": np.array(json.dumps(self.rng.bit_generator.state)),  # so a resumed run samples the same windows
        }

    def load_state_dict(self, state: dict):
        old_capacity = int(state["capacity"])
        if old_capacity == self.capacity:
            for k in self.data:
                self.data[k][:, : state["data"][k].shape[1]] = state["data"][k]
            self.pos[...], self.count[...] = state["pos"], state["count"]
            self.queue = deque((int(e), int(s)) for e, s in state["queue"])
            self.rng.bit_generator.state = json.loads(str(state["rng"]))
            return
        for e in range(self.num_envs):  # another capacity (e.g. a longer run): keep the newest steps in order
            n = int(min(state["count"][e], old_capacity))
            order = ((state["pos"][e] - n + np.arange(n)) % old_capacity)[-self.capacity :]
            for k in self.data:
                self.data[k][e, : len(order)] = state["data"][k][e, order]
            self.pos[e], self.count[e] = len(order) % self.capacity, len(order)
        self.queue = deque()


def check_memory(steps: int, step_bytes: int):
    """Refuse a replay buffer that cannot fit in this machine's RAM (a one-line error instead of a crash mid-run)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return
    need = steps * step_bytes
    if need > 0.9 * ram:
        fits = int(0.5 * ram / step_bytes)
        raise UsageError(
            f"the replay buffer ({steps:,} steps of {step_bytes:,} bytes) needs {need / 2**30:.1f} GiB, more than this "
            f"machine's {ram / 2**30:.1f} GiB of RAM: pass --buffer-size {fits // 1000 * 1000 or fits} or less"
        )


# ======================================================================================================================
# 7. The agent: networks, observe (scan), imagine (scan), losses, one jitted train step, jitted policy step
# ======================================================================================================================


class TrainState(flax.struct.PyTreeNode):
    params: Any  # {"enc", "rssm", "dec", "rew", "con", "actor", "critic"} + THICK {"cdec", "crew", "ccon", "ccritic", "hl"}
    opt_state: Any
    slow_critic: Any  # EMA copy of the critic, a regulariser target only
    slow_ccritic: Any  # THICK: EMA copy of the coarse critic
    retnorm: jnp.ndarray  # (2,) percentile EMA state (lo, hi) of the return scale
    updates: jnp.ndarray  # number of updates applied


def sg(x):
    return jax.tree.map(jax.lax.stop_gradient, x)


class Agent:
    """Builds the networks for the given spaces and the jitted functions that use them (closures over `args`)."""

    def __init__(self, args: Args, obs_space: gym.Space, act_space: gym.Space):
        self.args, size = args, SIZES[args.model_size]
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) not in (1, 3):  # type first: a Tuple has no shape
            raise UsageError(f"unsupported observation space {obs_space}: use a Box of images (H, W, C) or flat vectors")
        self.image = len(obs_space.shape) == 3
        if self.image and (obs_space.shape[0] != obs_space.shape[1] or obs_space.shape[0] % 16):
            raise UsageError(f"image observations must be square with a side divisible by 16, got {obs_space.shape}")
        if self.image and obs_space.dtype != np.uint8 and not (obs_space.low.min() >= 0 and obs_space.high.max() <= 255):
            # float images in [0, 1] arrive here as uint8 (common.make_env converts them); [0, 255] is used as it is
            raise UsageError(f"float image observations must lie in [0, 1] or [0, 255], got {obs_space}")
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        if not self.discrete and not (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1):
            raise UsageError(f"unsupported action space {act_space}: use Discrete or a 1-D Box")
        self.obs_space, self.act_space = obs_space, act_space
        self.act_dim = int(act_space.n) if self.discrete else int(act_space.shape[0])
        self.deter, self.stoch, self.classes = size["deter"], size["stoch"], size["classes"]
        self.ctx = args.context_dim  # THICK: C
        dt = jnp.bfloat16 if args.compute_dtype == "bfloat16" else jnp.float32
        units, depth = size["units"], size["depth"]
        # ALGO LOGIC: initialize agent here
        self.enc = Encoder(depth, units, self.image, dt)
        self.rssm = RSSM(
            self.deter,
            size["hidden"],
            self.stoch,
            self.classes,
            unimix=args.latent_unimix,
            dtype=dt,
            context=self.ctx,
            gate_noise=args.gate_noise,
        )
        self.dec = Decoder(depth, units, tuple(obs_space.shape), self.image, dtype=dt)
        self.rew = MLPHead(1, units, 255, outscale=0.0, dtype=dt)  # zero-initialised: predicts 0 at the start
        self.con = MLPHead(1, units, 1, outscale=1.0, dtype=dt)
        # discrete: one output layer of A logits; continuous: two output layers "mean" and "stddev" of A each, as the
        # reference's (danijar/dreamerv3:embodied/jax/heads.py@e3f0224), so AGC clips them separately; out = [mean | std]
        heads = () if self.discrete else ("mean", "stddev")
        self.actor = MLPHead(3, units, self.act_dim, outscale=0.01, dtype=dt, outputs=heads)
        self.critic = MLPHead(3, units, 255, outscale=0.0, dtype=dt)
        # ALGO LOGIC: THICK: coarse heads on (c, z) without h (the coarse decoder is the image decoder with c in place of
        # h and one block), the coarse critic v_c(z_c, c) and the high-level model
        self.cdec = Decoder(args.coarse_dec_depth or depth, units, tuple(obs_space.shape), self.image, blocks=1, dtype=dt)
        self.crew = MLPHead(1, units, 255, outscale=0.0, dtype=dt)
        self.ccon = MLPHead(1, units, 1, outscale=1.0, dtype=dt)
        self.ccritic = MLPHead(3, units, 255, outscale=0.0, dtype=dt)
        hl_act = self.act_dim * (1 if self.discrete else 2)  # THICK: one output layer [mean | std] (continuous)
        self.hl = HighLevelModel(self.stoch, self.classes, hl_act, args.hl_actions, units, args.latent_unimix, dt)
        groups = (("actor", args.actor_lr), ("critic", args.critic_lr), ("ccritic", args.critic_lr))  # THICK: + ccritic
        group_lr = {k: v for k, v in groups if v is not None}
        self.opt = laprop(args.learning_rate, args.opt_eps, args.agc, args.warmup, group_lr=group_lr)
        self.gamma = 1.0 - 1.0 / args.horizon  # 0.996997 for horizon 333
        self.train_step = jax.jit(self._train_step, donate_argnums=0)
        self.policy_step = jax.jit(self._policy_step)
        self.openl_video = jax.jit(self._openl_video)
        self.init = jax.jit(self._init)  # one compiled program instead of hundreds of eager ops

    # ------------------------------------------------------------------------------------------------ initialisation
    def _init(self, key) -> TrainState:
        k = jax.random.split(key, 13)
        obs = jnp.zeros((1, *self.obs_space.shape), jnp.uint8 if self.image else jnp.float32)
        h, z, c = jnp.zeros((1, self.deter)), jnp.zeros((1, self.stoch, self.classes)), jnp.zeros((1, self.ctx))
        feat = jnp.zeros((1, self.deter + self.stoch * self.classes + self.ctx))
        cfeat = jnp.zeros((1, self.stoch * self.classes + self.ctx))  # THICK: coarse features [flat z, c]
        params = {"enc": self.enc.init(k[0], obs)["params"]}
        embed = self.enc.apply({"params": params["enc"]}, obs)
        params["rssm"] = self.rssm.init(k[1], h, z, jnp.zeros((1, self.act_dim)), embed, c)["params"]
        params["dec"] = self.dec.init(k[2], h, z, c)["params"]  # THICK: c joins the fine decoder's input
        for name, i in (("rew", 3), ("con", 4), ("actor", 5), ("critic", 6)):
            params[name] = getattr(self, name).init(k[i], feat)["params"]
        # THICK: coarse decoder, coarse reward / continue / critic, high-level model
        params["cdec"] = self.cdec.init(k[7], c, z)["params"]
        for name, i in (("crew", 8), ("ccon", 9), ("ccritic", 10)):
            params[name] = getattr(self, name).init(k[i], cfeat)["params"]
        hl_in = (cfeat, c, jnp.zeros((1, self.stoch * self.classes)), k[12])
        params["hl"] = self.hl.init(k[11], *hl_in)["params"]
        return TrainState(
            params=params,
            opt_state=self.opt.init(params),
            slow_critic=jax.tree.map(jnp.copy, params["critic"]),
            slow_ccritic=jax.tree.map(jnp.copy, params["ccritic"]),
            retnorm=jnp.zeros(2),
            updates=jnp.zeros((), jnp.int32),
        )

    # ------------------------------------------------------------------------------------------------ small wrappers
    def context(self, p, z, a, c, key, noise=1.0):  # THICK: GateL0RD step, (c_t, Theta_t, Lambda_t, emb z, emb a)
        return self.rssm.apply({"params": p["rssm"]}, z, a, c, key, noise, method=RSSM.context_step)

    def core(self, p, h, ez, ea, c):
        return self.rssm.apply({"params": p["rssm"]}, h, ez, ea, c, method=RSSM.core)

    def prior(self, p, h, c):
        return self.rssm.apply({"params": p["rssm"]}, h, c, method=RSSM.prior)

    def posterior(self, p, h, c, embed):
        return self.rssm.apply({"params": p["rssm"]}, h, c, embed, method=RSSM.posterior)

    def coarse_prior(self, p, c, ez, ea):  # THICK: no h
        return self.rssm.apply({"params": p["rssm"]}, c, ez, ea, method=RSSM.coarse_prior)

    def head(self, name, p, feat):
        return getattr(self, name).apply({"params": p}, feat)

    @staticmethod
    def feat(h, z, c):  # f = concat(h, flatten(z), c): (..., D), (..., S, K), (..., C) -> (..., F); THICK: + c
        return jnp.concatenate([h, z.reshape(*z.shape[:-2], -1), c], -1).astype(jnp.float32)

    @staticmethod
    def cfeat(z, c):  # THICK: coarse features concat(flatten(z), c), no h: (..., S, K), (..., C) -> (..., S*K + C)
        return jnp.concatenate([z.reshape(*z.shape[:-2], -1).astype(jnp.float32), c.astype(jnp.float32)], -1)

    def policy(self, p, feat):
        return actor_dist(self.head("actor", p["actor"], feat), self.discrete, self.args.actor_unimix)

    # ------------------------------------------------------------------------------------------------ acting
    def initial_carry(self, n: int):
        return (
            jnp.zeros((n, self.deter)),
            jnp.zeros((n, self.stoch, self.classes)),
            jnp.zeros((n, self.ctx)),
            jnp.zeros((n, self.act_dim)),
        )

    def _policy_step(self, params, carry, obs, is_first, key, noise=1.0):
        """One env step for n envs: encode -> RSSM observe step (sampled posterior) -> sampled action.
        THICK: also returns whether any context gate opened (n,), for the acting change rate."""
        h, z, c, a = carry  # (n, D), (n, S, K), (n, C), (n, A): the previous step's posterior, context and action
        keep = 1.0 - is_first.astype(jnp.float32)  # at is_first the previous state and action are zeroed
        h, z, c, a = h * keep[:, None], z * keep[:, None, None], c * keep[:, None], a * keep[:, None]
        k1, k2, k3 = jax.random.split(key, 3)
        c, theta, _, ez, ea = self.context(params, z, a, c, k3, noise)  # THICK: context before the GRU
        h = self.core(params, h, ez, ea, c)  # (n, D)
        z = sample_onehot(k1, self.posterior(params, h, c, self.enc.apply({"params": params["enc"]}, obs)))  # (n, S, K)
        sample, _, _ = self.policy(params, self.feat(h, z, c))
        action = sample(k2)  # (n, A): one-hot or continuous
        latents = (h.astype(jnp.float16), jnp.argmax(z, -1).astype(jnp.uint8), c)  # stored in replay as context
        return action, (h, z, c, action), latents, jnp.any(theta > 0, -1)

    # ------------------------------------------------------------------------------------------------ observe / imagine
    def observe(self, p, h, z, c, embed, prev_action, is_first, key):
        """Posterior filtering over the batch, a lax.scan over time.
        h (B, D), z (B, S, K), c (B, C), embed (B, T, E), prev_action (B, T, A), is_first (B, T) -> h, z, post per step
        and (THICK) a dict with the context c, the gates Theta and Lambda (B, T, C) and the embeddings of z_{t-1}, a_{t-1}."""

        def observe_step(carry, inp):
            h, z, c = carry
            e, a, first, k = inp
            keep = 1.0 - first.astype(jnp.float32)
            h, z, c, a = h * keep[:, None], z * keep[:, None, None], c * keep[:, None], a * keep[:, None]  # reset
            k1, k2 = jax.random.split(k)
            c, theta, lam, ez, ea = self.context(p, z, a, c, k2)  # THICK: c_t from (z_{t-1}, a_{t-1}, c_{t-1})
            h = self.core(p, h, ez, ea, c)  # h_t = core(h_{t-1}, z_{t-1}, a_{t-1}, c_t)
            post = self.posterior(p, h, c, e)  # q(z_t | h_t, c_t, e_t)
            z = sample_onehot(k1, post)
            return (h, z, c), (h, z, post, {"c": c, "theta": theta, "lam": lam, "ez": ez, "ea": ea})

        tm = lambda x: jnp.swapaxes(x, 0, 1)  # batch-major <-> time-major
        keys = jax.random.split(key, embed.shape[1])
        _, (hs, zs, post, thick) = jax.lax.scan(observe_step, (h, z, c), (tm(embed), tm(prev_action), tm(is_first), keys))
        return tm(hs), tm(zs), tm(post), jax.tree.map(tm, thick)  # (B, T, D), (B, T, S, K), (B, T, S, K), dict

    def imagine(self, p, h, z, c, key):
        """Roll the prior forward H steps with the actor from N start states (all inputs and params stop-gradient).
        Returns states 0..H: h (N, H+1, D), z (N, H+1, S, K), c (N, H+1, C), the actions taken at states 0..H-1 (N, H, A)
        and (THICK) coarse-prior samples z_c (N, H+1, S, K) (the start state's is its posterior sample)."""

        def imagine_step(carry, k):
            h, z, c = carry
            k1, k2, k3, k4 = jax.random.split(k, 4)
            sample, _, _ = self.policy(p, self.feat(h, z, c))
            a = sample(k1)  # a_k ~ pi(. | s_k)
            c_next, _, _, ez, ea = self.context(p, z, a, c, k3)  # THICK: gate noise on, as in training
            h_next = self.core(p, h, ez, ea, c_next)
            z_next = sample_onehot(k2, self.prior(p, h_next, c_next))  # z_{k+1} ~ p(. | h_{k+1}, c_{k+1})
            zc_next = sample_onehot(k4, self.coarse_prior(p, c_next, ez, ea))  # THICK: z_c ~ p_c(. | c_{k+1}, z_k, a_k)
            return (h_next, z_next, c_next), (h, z, c, a, zc_next)

        (h_last, z_last, c_last), (hs, zs, cs, acts, zcs) = jax.lax.scan(
            imagine_step, (h, z, c), jax.random.split(key, self.args.imag_horizon)
        )
        hs = jnp.concatenate([hs, h_last[None]], 0)  # (H+1, N, D)
        zs = jnp.concatenate([zs, z_last[None]], 0)
        cs = jnp.concatenate([cs, c_last[None]], 0)
        zcs = jnp.concatenate([z[None], zcs], 0)
        sw = lambda x: jnp.swapaxes(x, 0, 1)
        return sw(hs), sw(zs), sw(cs), sw(acts), sw(zcs)

    # ------------------------------------------------------------------------------------------------ THICK: HL step
    def hl_step(self, p, z, c, key):
        """ALGO LOGIC: THICK: one high-level step from (z_t, c_t), inputs (..., S, K), (..., C):
        A ~ prior, z_{tau-1} ~ state head, a_{tau-1} ~ action head, Delta = clip(time head, 0, T-1), R = reward head mean;
        then one coarse C-RSSM step: c_tau = gate(c_t; z_{tau-1}, a_{tau-1}) (c is constant until tau - 1) and
        z_c ~ p_c(. | c_tau, z_{tau-1}, a_{tau-1}). Returns a dict with c_tau, zc, delta, R, z_pre, a_pre, prior log-probs."""
        k = jax.random.split(key, 5)
        hl = lambda *x, method: self.hl.apply({"params": p["hl"]}, *x, method=method)
        u = self.cfeat(z, c)
        lp = hl(u, method=HighLevelModel.prior_logp)
        A = jax.nn.one_hot(jax.random.categorical(k[0], lp, -1), self.args.hl_actions)
        out = hl(u, A, method=HighLevelModel.heads)
        z_pre = jax.nn.one_hot(jax.random.categorical(k[1], out["z"], -1), self.classes)  # (..., S, K)
        a_pre = actor_dist(out["a"], self.discrete, 0.0)[0](k[2])
        c_tau, zc = self.coarse_jump(p, z_pre, a_pre, c, k[3], k[4])
        delta = jnp.clip(out["delta"], 0.0, self.args.batch_length - 1)
        R = twohot_mean(out["R"], bins())
        return {"c_tau": c_tau, "zc": zc, "delta": delta, "R": R, "z_pre": z_pre, "a_pre": a_pre, "prior": lp}

    def coarse_jump(self, p, z_pre, a_pre, c, gate_key, sample_key):
        """THICK: the coarse C-RSSM step of the high level: c_tau = gate(c; z_{tau-1}, a_{tau-1}) with the same gate (and
        noise) as the C-RSSM, and z_c ~ p_c(. | c_tau, z_{tau-1}, a_{tau-1})."""
        c_tau, _, _, ez, ea = self.context(p, z_pre, a_pre, c, gate_key)
        return c_tau, sample_onehot(sample_key, self.coarse_prior(p, c_tau, ez, ea))

    def hl_loss(self, p_hl, tg, z, c, key):
        """ALGO LOGIC: THICK: masked high-level loss, averaged over all (b, t); inputs stop-gradient.
        tg: extract_targets output; z (B, T, S, K) posterior samples; c (B, T, C). Returns (total, terms, stats)."""
        u = sg(self.cfeat(z, c))
        k_post, k_prior = jax.random.split(key)
        out, lp, lq = self.hl.apply({"params": p_hl}, u, sg(tg["c_next"]), sg(tg["z_prev"]), k_post)
        m = sg(tg["mask"])
        lp1, lq1 = lp[..., None, :], lq[..., None, :]  # one categorical each
        kl_a = 0.8 * categorical_kl(sg(lq1), lp1) + 0.2 * categorical_kl(lq1, sg(lp1))
        raw = {
            "hl_z": categorical_kl(sg(tg["z"]), out["z"]),  # KL[target || prediction], summed over latents
            "hl_a": -actor_dist(out["a"], self.discrete, 0.0)[1](sg(tg["a"])),  # NLL of a_{tau-1}
            "hl_delta": (out["delta"] - sg(tg["delta"])) ** 2,  # MSE (THIX)
            "hl_R": twohot_loss(out["R"], sg(tg["R"]), bins()),  # symexp two-hot (THIX)
            "hl_A_kl": kl_a,  # balanced KL, alpha = 0.8 (our choice): the posterior gets 0.2 of the gradient
        }
        terms = {k: self.args.hl_scale * jnp.mean(m * v) for k, v in raw.items()}  # zero (and finite) for an empty mask
        msum = jnp.maximum(m.sum(), 1.0)
        # quality diagnostics, for the heads given A from the prior (as the high-level step behind V_long samples it) and,
        # with suffix _post, given A from the posterior (which saw c_tau and z_{tau-1}: the training pass's own fit)
        A_prior = jax.nn.one_hot(jax.random.categorical(k_prior, lp, -1), self.args.hl_actions)
        out_prior = sg(self.hl.apply({"params": p_hl}, u, A_prior, method=HighLevelModel.heads))
        stats = {"thick/hl_prior_entropy": categorical_entropy(lp).mean(),
                 "thick/hl_post_entropy": jnp.sum(m * categorical_entropy(lq)) / msum}  # over the valid targets
        for sfx, o in (("", out_prior), ("_post", out)):
            if self.discrete:  # how often the predicted a_{tau-1} is the one taken
                stats[f"thick/hl_action_acc{sfx}"] = jnp.sum(m * (jnp.argmax(o["a"], -1) == jnp.argmax(tg["a"], -1))) / msum
            else:  # continuous: mean |tanh(mean) - a_{tau-1}|
                a_mean = jnp.tanh(jnp.split(o["a"], 2, -1)[0])
                stats[f"thick/hl_action_abs_err{sfx}"] = jnp.sum(m * jnp.abs(a_mean - tg["a"]).mean(-1)) / msum
            stats[f"thick/hl_delta_abs_err{sfx}"] = jnp.sum(m * jnp.abs(o["delta"] - tg["delta"])) / msum
        return sum(terms.values()), terms, stats

    # ------------------------------------------------------------------------------------------------ THICK: coarse losses
    def coarse_losses(self, params, obs, reward, con_target, post, z, c, thick):
        """ALGO LOGIC: THICK: the coarse world model on the posterior (z, c), without h: coarse prior p_c(z_t | c_t, ...),
        decoder, reward and continue heads; and the sparsity loss on the gate openings. Returns the loss terms as they
        enter the total (scales: dec --coarse-dec-scale, reward --reward-scale, cont 1, dyn 1, rep --coarse-rep-scale),
        the gate openings theta (B, T, C), the steps whose opening can be a change (B, T), and raw values for the
        diagnostics."""
        args, b = self.args, bins()
        bsz, tlen = reward.shape
        cprior = self.coarse_prior(params, c, thick["ez"], thick["ea"])  # (B, T, S, K)
        cfeat = self.cfeat(z, c)
        crecon = self.cdec.apply({"params": params["cdec"]}, c, z)
        if self.image:
            loss_crec = jnp.sum((crecon - obs.astype(jnp.float32) / 255.0) ** 2, (-3, -2, -1))
        else:
            loss_crec = jnp.sum((crecon - symlog(obs.astype(jnp.float32))) ** 2, -1)
        loss_crew = twohot_loss(self.head("crew", params["crew"], cfeat), reward, b)
        loss_ccon = optax.sigmoid_binary_cross_entropy(self.head("ccon", params["ccon"], cfeat)[..., 0], con_target)
        ckl_dyn, ckl_rep = categorical_kl(sg(post), cprior), categorical_kl(post, sg(cprior))
        valid = jnp.ones((bsz, tlen))  # steps whose gate opening can be a change
        if not args.replay_context:  # a window that starts from zeros re-loads c at t = 0: not a change
            valid = valid.at[:, 0].set(0.0)
        theta = thick["theta"] * valid[..., None]  # (B, T, C) straight-through gate openings
        loss_sparse = sparse_loss(theta, args.sparse_free)
        terms = {
            "wm_coarse_recon": args.coarse_dec_scale * loss_crec.mean(),
            "wm_coarse_reward": args.reward_scale * loss_crew.mean(),
            "wm_coarse_cont": loss_ccon.mean(),
            "wm_coarse_kl_dyn": jnp.maximum(args.free_nats, ckl_dyn).mean(),
            "wm_coarse_kl_rep": args.coarse_rep_scale * jnp.maximum(args.free_nats, ckl_rep).mean(),
            "wm_sparse": args.sparse_scale * loss_sparse,
        }
        return terms, theta, valid, {"ckl_dyn": ckl_dyn, "sparse": loss_sparse}

    def diagnostics(self, theta, valid, craw, thick, tg, hls, v_long, ret, target, cv_logits, fallback) -> dict:
        """THICK: metrics only (no gradient): change rate, per-dim open rate, mean Lambda when open, high-level targets
        and predictions, V_long and the critics' target."""
        b, c, msum = bins(), thick["c"], tg["mask"].sum()
        changed = jnp.any(theta > 0, -1)
        open_ = (theta > 0).astype(jnp.float32)
        open_rate = jnp.sum(open_, (0, 1)) / valid.sum()  # (C,) per-dim open rate over the valid steps
        metrics = {
            "thick/change_rate": jnp.sum(changed) / valid.sum(), "thick/gate_activity": open_rate.mean(),
            "thick/sparse_raw": craw["sparse"],
            "thick/lambda_when_open": jnp.sum(thick["lam"] * open_) / jnp.maximum(open_.sum(), 1.0),
            "thick/hl_valid_frac": tg["mask"].mean(),
            "thick/hl_delta_target": jnp.sum(tg["mask"] * tg["delta"]) / jnp.maximum(msum, 1.0),
            "thick/hl_prior_entropy_imag": categorical_entropy(hls["prior"]).mean(),
            "thick/hl_delta_pred": hls["delta"].mean(),
            "thick/v_long_mean": v_long.mean(), "thick/v_long_std": v_long.std(),
            "thick/ret_minus_v_long": (ret - v_long).mean(),
            "thick/target_mean": target.mean(), "thick/coarse_value_mean": twohot_mean(cv_logits, b).mean(),
            "thick/fallback": fallback.astype(jnp.float32), "thick/coarse_kl_dyn_raw": craw["ckl_dyn"].mean(),
            "thick/context_abs": jnp.abs(c).mean(),
        }  # fmt: skip
        metrics |= {f"thick/open_rate/{i}": open_rate[i] for i in range(self.ctx)}
        return metrics

    # ------------------------------------------------------------------------------------------------ losses
    def loss(self, params, slow_critic, slow_ccritic, retnorm, batch, key):
        """The single scalar loss (danijar/dreamerv3:dreamerv3/agent.py@e3f0224) and its parts.
        batch: arrays (B, T+1, ...) with step 0 as context."""
        args, b = self.args, bins()
        k_obs, k_img, k_hl, k_hls = jax.random.split(key, 4)
        obs, reward = batch["obs"][:, 1:], batch["reward"][:, 1:]  # (B, T, ...), (B, T)
        is_first, is_last, is_terminal = batch["is_first"][:, 1:], batch["is_last"][:, 1:], batch["is_terminal"][:, 1:]
        bsz, tlen = reward.shape

        # ALGO LOGIC: world model
        embed = self.enc.apply({"params": params["enc"]}, obs)  # (B, T, E)
        if args.replay_context:  # start from the posterior the actor (or the last update) stored for step 0
            h0 = batch["deter"][:, 0].astype(jnp.float32)
            z0 = jax.nn.one_hot(batch["stoch"][:, 0], self.classes)
            c0 = batch["context"][:, 0].astype(jnp.float32)  # THICK: stored context as the carry
        else:  # 2023 behaviour: every window starts from zeros
            h0, z0 = jnp.zeros((bsz, self.deter)), jnp.zeros((bsz, self.stoch, self.classes))
            c0 = jnp.zeros((bsz, self.ctx))
            is_first = is_first.at[:, 0].set(True)
        h, z, post, thick = self.observe(params, h0, z0, c0, embed, batch["action"][:, :-1], is_first, k_obs)
        c = thick["c"]  # (B, T, C)
        prior = self.prior(params, h, c)  # (B, T, S, K), batched outside the scan: it depends on h and c only
        feat = self.feat(h, z, c)  # (B, T, F)
        recon = self.dec.apply({"params": params["dec"]}, h, z, c)
        if self.image:  # L_img = sum over pixels of (dec - o/255)^2
            loss_rec = jnp.sum((recon - obs.astype(jnp.float32) / 255.0) ** 2, (-3, -2, -1))
        else:  # L_vec = sum over dims of (dec - symlog(x))^2
            loss_rec = jnp.sum((recon - symlog(obs.astype(jnp.float32))) ** 2, -1)
        loss_rew = twohot_loss(self.head("rew", params["rew"], feat), reward, b)  # CE(twohot(r_t), rew(f_t))
        con_target = (1.0 - is_terminal.astype(jnp.float32)) * self.gamma  # "contdisc": (1 - term) * gamma
        loss_con = optax.sigmoid_binary_cross_entropy(self.head("con", params["con"], feat)[..., 0], con_target)
        kl_dyn = categorical_kl(sg(post), prior)  # KL[sg(q) || p], summed over latents
        kl_rep = categorical_kl(post, sg(prior))  # KL[q || sg(p)]
        loss_dyn = jnp.maximum(args.free_nats, kl_dyn)  # free nats: no gradient while KL < 1
        loss_rep = jnp.maximum(args.free_nats, kl_rep)

        # ALGO LOGIC: THICK: coarse world model on (posterior z, c) without h, and the sparsity loss on the gate openings
        coarse_terms, theta, valid, craw = self.coarse_losses(params, obs, reward, con_target, post, z, c, thick)

        # ALGO LOGIC: THICK: high-level targets (reverse scan) and loss, stop-gradient inputs
        changed = jnp.any(theta > 0, -1)  # g_t = any_i Theta_{t,i}  (B, T)
        ev = changed | is_terminal.astype(bool)
        act = batch["action"][:, 1:]  # a_t, chosen after o_t
        tg = extract_targets(sg(ev), is_first, sg(post), sg(z.reshape(bsz, tlen, -1)), sg(c), act, reward, self.gamma)
        _, hl_terms, hl_stats = self.hl_loss(params["hl"], tg, z, c, k_hl)
        msum = tg["mask"].sum()

        # ALGO LOGIC: imagination from every posterior state; nothing here trains the world model
        p_sg, n = sg(params), bsz * tlen
        ih, iz, ic, iact, izc = self.imagine(
            p_sg, sg(h).reshape(n, -1), sg(z).reshape(n, self.stoch, self.classes), sg(c).reshape(n, -1), k_img
        )
        ifeat = self.feat(ih, iz, ic)  # (N, H+1, F)
        irew = twohot_mean(self.head("rew", p_sg["rew"], ifeat), b)  # (N, H+1) expected reward of entering s_k
        icon = jax.nn.sigmoid(self.head("con", p_sg["con"], ifeat)[..., 0])  # (N, H+1) continue prob. (incl. gamma)
        v_logits = self.head("critic", params["critic"], ifeat)  # (N, H+1, 255)
        v = twohot_mean(v_logits, b)
        slow_v = twohot_mean(self.head("critic", slow_critic, ifeat), b)
        ret = lambda_return(irew, icon, args.lam * jnp.ones_like(icon), sg(v))  # (N, H): bootstrap = online critic
        weight = sg(jnp.cumprod(icon, 1))  # w_k = prod_{j<=k} c_j, including the start state
        retnorm, scale = percentile_update(retnorm, sg(ret))  # S = max(1, P95 - P5) (EMA)

        # ALGO LOGIC: THICK: one high-level step per imagined state k = 0..H-1 and the long-horizon value
        #   V_long = R_hat + gamma^Delta_hat * con_c(c_tau, z_c) * v_c(z_c, c_tau);  target = psi ret + (1 - psi) sg(V_long)
        hls = self.hl_step(p_sg, iz[:, :-1], ic[:, :-1], k_hls)  # (N, H, ...)
        tau_feat = self.cfeat(hls["zc"], hls["c_tau"])
        con_c = jax.nn.sigmoid(self.head("ccon", p_sg["ccon"], tau_feat)[..., 0])  # ~ gamma * cont at tau
        v_c_tau = twohot_mean(self.head("ccritic", p_sg["ccritic"], tau_feat), b)  # online coarse critic (slowtar off)
        v_long = sg(long_value(hls["R"], hls["delta"], con_c, v_c_tau, self.gamma))  # (N, H)
        target, fallback = mixed_target(ret, v_long, args.psi, msum)  # (N, H); psi = 1 if the batch has no events

        # ALGO LOGIC: actor, REINFORCE for discrete and continuous actions; THICK: on the pure lambda-return
        _, logp, entropy = self.policy(params, ifeat[:, :-1])
        adv = (ret - v[:, :-1]) / scale  # A_k = (R_k - v_k) / S
        loss_actor = weight[:, :-1] * -(logp(sg(iact)) * sg(adv) + args.actor_entropy * entropy)

        # ALGO LOGIC: critic on imagination, two-hot CE toward sg(target) plus the slow-critic regulariser
        # THICK: target = the mixed target; the coarse critic v_c(z_c, c) regresses the same target on the imagined states
        loss_critic = weight[:, :-1] * (
            twohot_loss(v_logits[:, :-1], sg(target), b) + args.slowreg * twohot_loss(v_logits[:, :-1], sg(slow_v[:, :-1]), b)
        )
        icfeat = self.cfeat(izc[:, :-1], ic[:, :-1])  # (N, H, S*K + C)
        cv_logits = self.head("ccritic", params["ccritic"], icfeat)
        slow_cv = twohot_mean(self.head("ccritic", slow_ccritic, icfeat), b)
        loss_ccritic = weight[:, :-1] * (
            twohot_loss(cv_logits, sg(target), b) + args.slowreg * twohot_loss(cv_logits, sg(slow_cv), b)
        )

        # ALGO LOGIC: replay critic loss: lambda-returns on the data, bootstrapped with the imagined R_0;
        # the replay features are NOT stop-gradient, so this loss also trains encoder and RSSM
        boot = sg(ret[:, 0]).reshape(bsz, tlen)
        last, term = is_last.astype(jnp.float32), is_terminal.astype(jnp.float32)
        rret = lambda_return(reward, self.gamma * (1 - term), args.lam * (1 - last), boot)  # (B, T-1)
        rv_logits = self.head("critic", params["critic"], feat)[:, :-1]  # (B, T-1, 255)
        rslow = twohot_mean(self.head("critic", slow_critic, sg(feat)), b)[:, :-1]
        loss_repval = (1 - last[:, :-1]) * (
            twohot_loss(rv_logits, sg(rret), b) + args.slowreg * twohot_loss(rv_logits, sg(rslow), b)
        )

        terms = {  # every term already scaled as it enters the total
            "wm_recon": loss_rec.mean(), "wm_reward": args.reward_scale * loss_rew.mean(), "wm_cont": loss_con.mean(),
            "wm_kl_dyn": args.dyn_scale * loss_dyn.mean(), "wm_kl_rep": args.rep_scale * loss_rep.mean(),
            "actor": loss_actor.mean(), "critic": loss_critic.mean(), "repval": args.repval_scale * loss_repval.mean(),
            **coarse_terms, "coarse_critic": loss_ccritic.mean(), **hl_terms,  # THICK: coarse, sparsity, high level
        }  # fmt: skip
        total = sum(terms.values())
        metrics = {f"losses/{k}": v for k, v in terms.items()} | {
            "losses/total": total, "losses/entropy": entropy.mean(), "losses/kl_dyn_raw": kl_dyn.mean(),
            "stats/ret_mean": ret.mean(), "stats/ret_scale": scale, "stats/ret_lo": retnorm[0], "stats/ret_hi": retnorm[1],
            "stats/adv_mag": jnp.abs(adv).mean(), "stats/value_mean": v.mean(), "stats/imag_reward": irew.mean(),
            "stats/imag_cont": icon.mean(), "stats/prior_entropy": categorical_entropy(prior).sum(-1).mean(),
            "stats/post_entropy": categorical_entropy(post).sum(-1).mean(), "stats/repval_ret": rret.mean(),
        }  # fmt: skip
        # THICK: high-level model and C-RSSM diagnostics
        metrics |= hl_stats | self.diagnostics(theta, valid, craw, thick, tg, hls, v_long, ret, target, cv_logits, fallback)
        latents = (h.astype(jnp.float16), jnp.argmax(z, -1).astype(jnp.uint8), c)  # refreshed replay context
        return total, (terms, metrics, retnorm, latents)

    # ------------------------------------------------------------------------------------------------ train step
    def _train_step(self, state: TrainState, batch, key):
        """One update: loss and gradients, LaProp step, slow-critic EMA. A non-finite update is skipped (the state is
        kept) and reported through metrics['finite'] so the host can stop with a checkpoint."""
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        (total, (terms, metrics, retnorm, latents)), grads = grad_fn(
            state.params, state.slow_critic, state.slow_ccritic, state.retnorm, batch, key
        )
        updates, opt_state = self.opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        mix = self.args.slow_critic_mix  # theta_slow <- mix * theta + (1 - mix) * theta_slow
        slow = jax.tree.map(lambda s, q: (1 - mix) * s + mix * q, state.slow_critic, params["critic"])
        slow_c = jax.tree.map(lambda s, q: (1 - mix) * s + mix * q, state.slow_ccritic, params["ccritic"])  # THICK
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new = TrainState(
            params=params,
            opt_state=opt_state,
            slow_critic=slow,
            slow_ccritic=slow_c,
            retnorm=retnorm,
            updates=state.updates + 1,
        )
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics |= {f"finite/{k}": jnp.isfinite(v) for k, v in terms.items()}
        metrics |= {
            "finite": finite,
            "opt/grad_norm": grad_norm,
            "opt/update_rms": _rms(updates),
            "opt/param_rms": _rms(params),
        }
        return new, metrics, latents

    # ------------------------------------------------------------------------------------------------ open-loop video
    def _openl_video(self, params, batch, key, context: int = 5):
        """Observe `context` steps, then predict the rest open-loop with the data's actions: [truth | model | error].
        THICK: a 4th panel shows the coarse decoder's prediction from (c, z), without h: on the observed steps z is the
        posterior (as in training), on the open-loop steps the coarse-prior sample z_c ~ p_c(. | c, z, a) (as the coarse
        heads see it in imagination), not the fine prior's sample, which is drawn from h."""
        obs = batch["obs"][:4, 1:]  # (4, T, H, W, C)
        first = batch["is_first"][:4, 1:].at[:, 0].set(True)
        embed = self.enc.apply({"params": params["enc"]}, obs[:, :context])
        n = obs.shape[0]
        zeros = jnp.zeros((n, self.deter)), jnp.zeros((n, self.stoch, self.classes)), jnp.zeros((n, self.ctx))
        k1, k2 = jax.random.split(key)
        h, z, _, thick = self.observe(params, *zeros, embed, batch["action"][:4, :context], first[:, :context], k1)

        def open_step(carry, inp):
            hh, zz, cc = carry
            a, k = inp
            ka, kb, kc = jax.random.split(k, 3)
            cc, _, _, ez, ea = self.context(params, zz, a, cc, kb)
            hh = self.core(params, hh, ez, ea, cc)
            zc = sample_onehot(kc, self.coarse_prior(params, cc, ez, ea))  # THICK: z_c ~ p_c(. | c, z, a), no h
            zz = sample_onehot(ka, self.prior(params, hh, cc))
            return (hh, zz, cc), (hh, zz, cc, zc)

        acts = jnp.swapaxes(batch["action"][:4, context : obs.shape[1]], 0, 1)
        init = (h[:, -1], z[:, -1], thick["c"][:, -1])
        _, (oh, oz, oc, ozc) = jax.lax.scan(open_step, init, (acts, jax.random.split(k2, acts.shape[0])))
        zc = jnp.concatenate([z, jnp.swapaxes(ozc, 0, 1)], 1)  # posterior while observing, then coarse-prior samples
        h = jnp.concatenate([h, jnp.swapaxes(oh, 0, 1)], 1)
        z = jnp.concatenate([z, jnp.swapaxes(oz, 0, 1)], 1)
        c = jnp.concatenate([thick["c"], jnp.swapaxes(oc, 0, 1)], 1)
        model = self.dec.apply({"params": params["dec"]}, h, z, c)
        coarse = self.cdec.apply({"params": params["cdec"]}, c, zc)
        truth = obs.astype(jnp.float32) / 255.0
        video = jnp.concatenate([truth, model, (model - truth + 1) / 2, coarse], 3)  # side by side along the width
        return (jnp.clip(video, 0, 1) * 255).astype(jnp.uint8)  # (4, T, H, 4W, C)


def _rms(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves) / sum(x.size for x in leaves))


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------------ data parallel
# --num-devices N: data parallelism on jax.sharding, as danijar/dreamerv3 shards its train step. A 1-D mesh over N
# devices; the replay batch is split along its batch axis (PartitionSpec("batch")), the whole TrainState (parameters,
# optimizer state, slow critic, return normaliser) is replicated (PartitionSpec()). The train step is Agent._train_step
# jitted for these shardings: XLA partitions it and inserts the all-reduces (of the gradients, the batch means and the
# return percentiles), so an update equals the one-device update of the same global batch up to float32 summation order
# (tests/test_multidevice.py). Acting runs on the first device's copy of the parameters.
class DataParallel:
    def __init__(self, agent: Agent, num_devices: int):
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("batch",))
        self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # every device: all of it
        self.split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))  # device i: rows i B/N ...
        out = (self.replicated, self.replicated, self.split)  # (state, metrics, latents) of _train_step
        self.train_step = jax.jit(agent._train_step, donate_argnums=0, out_shardings=out)

    def replicate(self, tree):  # host values (the same in every process) -> one copy on every device
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

    def split_batch(self, batch: dict) -> dict:  # this process's rows (on one host: all B) -> the global batch, split
        return {k: jax.make_array_from_process_local_data(self.split, v) for k, v in batch.items()}

    @staticmethod
    def first(tree):  # the first device's copy of a replicated tree (no copy made): the parameters for acting
        return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)

    @staticmethod
    def local_rows(x) -> np.ndarray:  # this process's rows of a split array, in order (on one host: all of them)
        return np.concatenate([np.asarray(s.data) for s in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)])


def init_multihost():
    """Several hosts (untested here; the tests cover one host): each host starts this script with the same flags and
    --num-devices = all hosts' devices, either as a SLURM job step (`srun --ntasks-per-node 1 python <script>.py ...`:
    jax.distributed reads SLURM's variables) or with JAX_COORDINATOR_ADDRESS=host0:port JAX_NUM_PROCESSES=P
    JAX_PROCESS_ID=i set on host i. jax.distributed must connect them before anything touches the devices; then
    jax.devices() lists every process's devices and the mesh spans them. Each process acts in its own envs (seeds offset
    by process), fills its own replay, samples its B / P rows of every batch and writes its own run directory;
    --num-envs, --total-timesteps and the logged step counts are per process."""
    num, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    slurm = "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if "JAX_COORDINATOR_ADDRESS" in os.environ or slurm:
        try:
            jax.distributed.initialize(num_processes=num and int(num), process_id=pid and int(pid))
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"jax.distributed.initialize failed: {e}") from None


# ======================================================================================================================
# 8. Checkpoints (the training state and its replay as one unit), stop signals and evaluation
# ======================================================================================================================

FORMAT = "cleanwm-thick_dreamer_jax-3"  # THICK: its own format: cleanwm-<script>-<version> (others are refused by name)


def atomic_write(path: str, data):
    """Write `data` (bytes, or a function that writes into a file object) to path.tmp<pid>, flush it to the disk, then
    rename it to `path`: a reader, or a run killed at any instant, sees the old file or the new one, never a part.
    A failed write (a read-only directory, a full disk) leaves nothing behind and is a one-line UsageError."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def check_writable(path: str):
    """Raise a one-line UsageError unless the directory `path` (or, if it is not there yet, its nearest existing parent)
    accepts new files. Called before anything is created, so a bad working directory leaves nothing behind."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create {path}: {parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UsageError(f"cannot write into {parent} ({e.strerror}), where {path} goes: start in a writable directory") from e


def what_file(raw: bytes, fmt) -> str:
    """The end of the one-line error for a file that is not a FORMAT file: what it is, and what to do with it."""
    ours = os.path.basename(__file__)
    if isinstance(fmt, str) and fmt.startswith("cleanwm-"):
        script, _, version = fmt[len("cleanwm-") :].rpartition("-")
        if f"{script}.py" != ours:
            return f"was written by {script}.py, not {ours}: use it with {script}.py"
        return f"has the older format {fmt}, which this {ours} no longer reads (it reads {FORMAT}): train anew"
    if raw[:4] == b"PK\x03\x04":  # a zip: numpy's .npz or torch.save's format
        if b".npy" in raw[:200]:
            return "is a replay file (.npz): pass the checkpoint.ckpt that names it"
        return f"is a PyTorch file (as hieros_s5_torch.py writes), not a {ours} checkpoint or model"
    if raw[:1] == b"\x80":
        return f"is a Python pickle (e.g. an older PyTorch file), not a {ours} checkpoint or model"
    if raw[8:10] == b'{"':
        return f"is a safetensors file (as hieros_s5_torch.py writes), not a {ours} checkpoint or model"
    return f"is corrupt or not a {ours} file (a .cleanrl_model or checkpoint.ckpt)"


def save_file(path: str, args: Args, payload: dict):
    """A final model ({"params": ...}) or a checkpoint ({"state": ...}) as msgpack, with the format, the kind and the flags."""
    kind = "model" if "params" in payload else "checkpoint"
    payload = {"format": FORMAT, "kind": kind, "args": json.dumps(vars(args)), **payload}
    atomic_write(path, flax.serialization.msgpack_serialize(jax.device_get(payload)))


def load_file(path: str, kind: Optional[str] = None) -> dict:
    """Read a model or checkpoint of this script (kind "checkpoint": only a checkpoint); anything else is a UsageError that
    names what the file is."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = flax.serialization.msgpack_restore(raw)
        fmt = data.get("format") if isinstance(data, dict) else None
    except Exception:
        data, fmt = None, None
    if fmt != FORMAT:
        raise UsageError(f"{path} {what_file(raw, fmt)}")
    if kind == "checkpoint" and data["kind"] != "checkpoint":
        raise UsageError(
            f"{path} is a final model (--save-model), not a training checkpoint: evaluate it with --evaluate {path}; "
            "training continues only from a checkpoint.ckpt (--checkpoint-every, or written on SIGTERM / Ctrl-C)"
        )
    data["args"] = json.loads(data["args"])
    return data


def restore_tree(template, saved, path: str, what: str):
    """Put saved arrays into the structure of `template`, checking every shape; a mismatch is a one-line error."""
    try:
        tree = flax.serialization.from_state_dict(template, saved)
        shapes_ok = jax.tree.all(jax.tree.map(lambda a, b: np.shape(a) == np.shape(b), template, tree))
    except Exception:
        shapes_ok = False
    if not shapes_ok:
        raise UsageError(f"{path}: the saved {what} does not match this model (different spaces or sizes?)")
    return jax.tree.map(jnp.asarray, tree)


def config_diff(saved: dict, args: Args) -> list:
    return [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in vars(args).items() if k not in RESUME_FREE and saved.get(k) != v]


class Checkpoints:
    """Resume, checkpoints and stop signals of one training run (the helper that keeps main() a plain loop).

    A checkpoint is one unit of two files in runs/{run_name}/:
        checkpoint.step{N}.replay.npz   the replay buffer after global_step N (N is stored inside too)
        checkpoint.ckpt                 networks, optimizer, RNG key, counters and flags; names its replay file
    save() writes the replay under its new name, then replaces checkpoint.ckpt, each through a .tmp<pid> file that is
    flushed to the disk and renamed; the second rename is the commit. Only after it are older replay files deleted. A
    kill at any instant thus leaves the old pair or the new pair, plus unnamed files that the next run here deletes.
    read() refuses a pair whose step counters differ."""

    def __init__(self, args: Args, run_name: str, saved: Optional[dict] = None):
        self.args, self.run_name, self.dir = args, run_name, f"runs/{run_name}"
        self.path = os.path.join(self.dir, "checkpoint.ckpt")
        same = saved is not None and os.path.abspath(args.resume) == os.path.abspath(self.path)
        self.step = int(saved["global_step"]) if saved else None  # global_step of the last committed checkpoint
        self.last_path = args.resume if saved else None
        self.saved_step = self.step if same else None  # the checkpoint in self.path holds this step already
        self.keep = saved["replay"] if same else None  # the replay file that self.path names
        self.stop, self.writing = None, False  # the stop signal received; a write is under way

    # ------------------------------------------------------------------------------------------------ resume
    @staticmethod
    def read(args: Args) -> dict:
        """Load and check the --resume checkpoint before anything is created: kind, flags, steps left, its replay."""
        saved = load_file(args.resume, kind="checkpoint")
        diff = config_diff(saved["args"], args)
        if diff:
            raise UsageError(f"{args.resume} was written with other flags: {', '.join(diff)}")
        step = int(saved["global_step"])
        if step >= args.total_timesteps:
            raise UsageError(f"{args.resume} is at global_step={step}: pass a larger --total-timesteps to continue")
        saved["replay_path"], empty = None, " (--no-checkpoint-replay resumes with an empty replay)"
        if saved["replay"]:
            path = os.path.join(os.path.dirname(args.resume), saved["replay"])
            if os.path.isfile(path):
                try:
                    with np.load(path) as f:
                        replay_step = int(f["global_step"])
                except Exception:
                    raise UsageError(f"cannot read {path}: corrupt replay file{empty}") from None
                if replay_step != step:
                    raise UsageError(
                        f"{path} holds the replay of global_step={replay_step}, but {args.resume} is at global_step={step}: "
                        f"the two are not one checkpoint{empty}"
                    )
                saved["replay_path"] = path
            elif args.checkpoint_replay:
                raise UsageError(f"{path} not found: the checkpoint names it as its replay{empty}")
        return saved

    def restore(self, saved: dict, state: TrainState, replay: Replay):
        """The saved training state put into `state` and `replay`: returns (state, key, global_step, counters)."""
        names = [f.name for f in dataclasses.fields(state)]
        state = state.replace(**{k: restore_tree(getattr(state, k), saved["state"][k], self.args.resume, k) for k in names})
        updates, count = int(state.updates), int(state.opt_state.count)
        if count != updates:
            raise UsageError(f"{self.args.resume} is inconsistent: {updates} updates, but an optimizer state after {count}")
        if saved["replay_path"]:
            try:
                with np.load(saved["replay_path"]) as f:
                    arrays = {k: f[k] for k in f.files}
                replay.load_state_dict({"data": {k[5:]: v for k, v in arrays.items() if k.startswith("data_")}, **arrays})
            except Exception:
                raise UsageError(f"cannot read {saved['replay_path']}: corrupt replay file") from None
        print(f"resumed from {self.args.resume} at global_step={self.step}, updates={updates}, replay={len(replay)}")
        return state, jnp.asarray(saved["key"], jnp.uint32), self.step, json.loads(saved["counters"])

    # ------------------------------------------------------------------------------------------------ writing
    def open_run_dir(self):
        """Create the run directory (once every check has passed) and delete what interrupted writes left in it."""
        check_writable(self.dir)
        if self.args.capture_video:
            check_writable(f"videos/{self.run_name}")
        os.makedirs(self.dir, exist_ok=True)
        self.clean(keep=self.keep)

    def save(self, state: TrainState, replay: Replay, global_step: int, key, **counters) -> str:
        """Commit the training state and its replay as one checkpoint (see the class docstring); returns its path.
        `counters`: the loop's other state (JSON values), given back by restore()."""
        if global_step == self.saved_step:
            return self.path  # nothing has changed since the last one
        self.writing = True
        try:
            os.makedirs(self.dir, exist_ok=True)
            name = f"checkpoint.step{global_step}.replay.npz" if self.args.checkpoint_replay else ""
            if name:  # 1. the replay under a name no checkpoint uses yet
                rs = replay.state_dict()
                arrays = {k: v for k, v in rs.items() if k != "data"} | {f"data_{k}": v for k, v in rs["data"].items()}
                atomic_write(os.path.join(self.dir, name), lambda f: np.savez(f, global_step=global_step, **arrays))
            state_dict = flax.serialization.to_state_dict(state)
            payload = {"run_name": self.run_name, "state": state_dict, "global_step": global_step, "key": key}
            save_file(self.path, self.args, payload | {"replay": name, "counters": json.dumps(counters)})  # 2. the commit
            if hasattr(os, "O_DIRECTORY"):  # the renames themselves reach the disk (POSIX)
                fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(fd)
                os.close(fd)
            self.step, self.saved_step, self.last_path = global_step, global_step, self.path
            self.clean(keep=name)  # 3. the older replay files
        except (UsageError, OSError) as e:
            message = str(e) if isinstance(e, UsageError) else f"cannot write into {self.dir}: {e.strerror or e}"
            raise UsageError(f"{message}; {self.last()}") from None
        finally:
            self.writing = False
        return self.path

    def clean(self, keep: Optional[str]):
        """Delete the temporaries of processes that are gone and, unless keep is None, the replay files other than keep."""
        for name in os.listdir(self.dir):
            tmp = re.fullmatch(r".+\.tmp(\d+)", name)
            if tmp:
                stale = not writing_elsewhere(int(tmp.group(1)))
            else:
                stale = keep is not None and name != keep and re.fullmatch(r"checkpoint\.step\d+\.replay\.npz", name)
            if stale:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.dir, name))

    def stopped(self, global_step: int, path: str) -> Stopped:
        name, more = signal.Signals(self.stop).name, f"continue with the same command plus --resume {path}"
        return Stopped(f"stopped by {name} at global_step={global_step}; checkpoint written to {path} ({more})", self.stop)

    def last(self) -> str:
        if self.last_path is None:
            return "no checkpoint was written"
        return f"the last checkpoint is {self.last_path} at global_step={self.step}"

    # ------------------------------------------------------------------------------------------------ stop signals
    def catch_signals(self):
        """SIGTERM (kill, a cluster's pre-emption) or Ctrl-C: finish the current step, write a checkpoint, stop. Repeated
        signals wait for that write; only a second Ctrl-C before the write starts stops at once (the last committed
        checkpoint stays valid)."""
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.stop is None:
            self.stop, note = signum, "finishing this step, then writing a checkpoint and stopping"
        elif self.writing or signum == signal.SIGTERM:
            note = "already stopping: the checkpoint is written first"
        else:
            raise Stopped(f"stopped at once by a second {name}; {self.last()}", signum)
        os.write(2, f"{name}: {note}\n".encode())  # os.write, not print: print here may hit a print of the loop


def writing_elsewhere(pid: int) -> bool:
    """Whether path.tmp<pid> may be a write under way: process pid runs and is not this one (ours are never left over)."""
    if pid == os.getpid() or os.name != "posix":
        return pid != os.getpid()  # (off POSIX, os.kill cannot only ask: keep the file)
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's process
        pass
    return True


def run_episodes(agent: Agent, params, envs, episodes: int, seed: int, noise: float = 1.0):
    """Run the (sampling) policy until `episodes` episodes have finished; returns their stats from common.episode_stats.
    THICK: noise scales the gate noise (0 turns it off)."""
    key = jax.random.PRNGKey(seed)
    obs, _ = envs.reset(seed=seed)
    flags = common.EpisodeFlags(envs.num_envs)
    is_first, carry, done = flags.reset(), agent.initial_carry(envs.num_envs), []
    while len(done) < episodes:
        key, k = jax.random.split(key)
        action, carry, _, _ = agent.policy_step(params, carry, obs, is_first, k, noise)
        obs, _, term, trunc, infos = envs.step(to_env_action(agent, np.asarray(action)))
        is_first, _, _ = flags.step(term, trunc)
        done += common.episode_stats(infos)
    return done[:episodes]


def evaluate(
    model_path: str,
    make_env,
    env_id: Optional[str],
    eval_episodes: int,
    run_name: str,
    Model=None,
    capture_video: bool = False,
    seed: int = 1,
    gate_noise: Optional[bool] = None,
):
    """CleanRL's evaluation signature: load a saved model (or checkpoint), run episodes, return the episodic returns.
    env_id None: the env the model was trained on. Prints one line: the mean and std of the return (Crafter: + score).
    THICK: gate_noise (default: the saved --eval-gate-noise) keeps the context gate noise on during evaluation."""
    saved = load_file(model_path)
    args = Args(**{k: v for k, v in saved["args"].items() if k in {f.name for f in dataclasses.fields(Args)}})
    env_id = args.env_id if env_id is None else env_id
    envs = gym.vector.SyncVectorEnv([make_env(env_id, seed, 0, capture_video, run_name)])
    agent = (Model or Agent)(args, envs.single_observation_space, envs.single_action_space)
    template = agent.init(jax.random.PRNGKey(0)).params
    saved_params = saved["params"] if "params" in saved else saved["state"]["params"]
    try:
        params = restore_tree(template, saved_params, model_path, "params")
    except UsageError:
        if args.env_id == env_id:
            raise
        raise UsageError(f"{model_path} was trained on --env-id {args.env_id}, not {env_id}") from None
    noise = float(args.eval_gate_noise if gate_noise is None else gate_noise)  # THICK: gate noise while evaluating
    episodes = run_episodes(agent, params, envs, eval_episodes, seed, noise)
    envs.close()
    returns = [e["r"] for e in episodes]
    line = f"eval: {len(returns)} episodes, return {np.mean(returns):.2f} +- {np.std(returns):.2f}"
    achievements = [e["achievements"] for e in episodes if e["achievements"] is not None]
    if achievements:
        line += f", crafter score {common.crafter_score(common.crafter_success_rates(achievements)):.2f} %"
    print(line)
    return returns


def change_strip(frames) -> np.ndarray:
    """THICK: frames [(obs (H, W, 3) uint8, changed)] -> one image (H + 4, n * W, 3) with a green (context changed) or red
    (unchanged) bar under each frame."""
    tiles = []
    for img, changed in frames:
        bar = np.zeros((4, img.shape[1], 3), np.uint8)
        bar[..., 1 if changed else 0] = 255
        tiles.append(np.concatenate([img[..., :3], bar], 0))
    return np.concatenate(tiles, 1)


class ChangeStats:
    """THICK: how often the acting context changes: per log window (thick/acting_change_rate), per episode
    (thick/episode_change_rate), and env 0's recent frames as an image (thick/context_change_strip, image observations)."""

    def __init__(self, num_envs: int, image: bool):
        self.changes, self.steps, self.image = 0, 0, image  # this log window's context changes and env steps
        self.ep_changes, self.ep_steps = np.zeros(num_envs), np.zeros(num_envs)  # per env, this episode's
        self.strip = deque(maxlen=32)

    def add(self, writer, changed: np.ndarray, is_last: np.ndarray, obs, global_step: int):
        """One policy step: changed (E,) bool, whether each env's context changed with this observation."""
        self.changes, self.steps = self.changes + int(changed.sum()), self.steps + len(changed)
        self.ep_changes, self.ep_steps = self.ep_changes + changed, self.ep_steps + 1
        for i in np.flatnonzero(is_last):  # the episode of env i ends with this observation
            writer.add_scalar("thick/episode_change_rate", self.ep_changes[i] / self.ep_steps[i], global_step)
            self.ep_changes[i], self.ep_steps[i] = 0, 0
        if self.image:
            self.strip.append((obs[0], bool(changed[0])))

    def log_window(self, writer, global_step: int):
        writer.add_scalar("thick/acting_change_rate", self.changes / max(self.steps, 1), global_step)
        self.changes, self.steps = 0, 0

    def log_strip(self, writer, global_step: int):
        writer.add_image("thick/context_change_strip", change_strip(self.strip), global_step, dataformats="HWC")


def to_env_action(agent: Agent, action: np.ndarray):
    """Agent action (one-hot or in [-1, 1]) -> env action (index or rescaled to the Box bounds)."""
    if agent.discrete:
        return action.argmax(-1) + int(agent.act_space.start)  # Discrete(n, start) counts from start
    low, high = agent.act_space.low, agent.act_space.high
    action = np.clip(action, -1.0, 1.0)
    if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
        action = low + (action + 1.0) / 2.0 * (high - low)
    return action.astype(agent.act_space.dtype)


# ======================================================================================================================
# 9. Progress lines and the main loop (CleanRL skeleton): act, store steps, train at the train ratio, log, checkpoint
# ======================================================================================================================

# About how many seconds XLA takes on one free CPU core to compile (init + policy step, train step) per --model-size, for
# image observations (vectors compile faster, a busy machine takes longer); printed before each of these one-off waits.
COMPILE_S = {"debug": (30, 100), "1m": (40, 100), "12m": (40, 100)}  # THICK: a larger train step


def compile_note(args: Args, what: str, which: int) -> str:
    if jax.devices()[0].platform != "cpu":
        return f"compiling the {what} (a one-off)"
    seconds = COMPILE_S.get(args.model_size)
    return f"compiling the {what}, a one-off of about {f'{seconds[which]} s' if seconds else 'minutes'} on a CPU"


def duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 1440}d{minutes // 60 % 24:02d}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Progress lines on stdout: at every multiple of --log-every policy steps (with the TensorBoard scalars) and at least
    every 30 s. The ETA uses the step rate since this process's first update ended, so neither the fast prefill nor the
    compilation is averaged in; a few updates later it says once how long the whole run takes."""

    def __init__(self, args: Args, global_step: int, updates: int):
        self.args, self.t0, self.step0, self.updates0 = args, time.time(), global_step, updates  # SPS: since the start
        self.first = None  # when this process's first update started
        self.train = None  # (time, global_step, updates) once it has ended
        self.printed, self.told = self.t0, False

    def before_update(self):
        if self.first is None:
            self.first = time.time()
            print(compile_note(self.args, "train step", 1), flush=True)

    def after_updates(self, global_step: int, updates: int):
        now = time.time()
        if self.first is None:  # no update in this process yet (none was due)
            return
        if self.train is None:
            self.train = (now, global_step, updates)
            print(f"train step compiled; the first update took {now - self.first:.0f} s", flush=True)
        elif not self.told and updates - self.train[2] >= 5 and now - self.train[0] >= 10 and global_step > self.train[1]:
            self.told, left, total = True, self.eta(global_step), self.args.total_timesteps
            print(f"estimate: this run reaches step {total:,} in about {duration(left)} at the speed of its updates so far")
            if jax.devices()[0].platform == "cpu" and left > 3600:
                print(f"that is hours on this CPU; for a first look, try the CartPole quick start: {QUICK_START}", flush=True)

    def eta(self, global_step: int) -> float:
        t, s, _ = self.train
        return (self.args.total_timesteps - global_step) * (time.time() - t) / max(global_step - s, 1)

    def sps(self, global_step: int) -> float:
        return (global_step - self.step0) / max(time.time() - self.t0, 1e-9)

    def log(self, writer, replay: Replay, metrics: dict, global_step: int, updates: int, extra: str = "") -> bool:
        """TensorBoard scalars at every multiple of --log-every and at the end (then returns True); a progress line then
        and whenever 30 s have passed."""
        now, args, sps = time.time(), self.args, self.sps(global_step)
        grid = global_step % args.log_every < args.num_envs or global_step >= args.total_timesteps
        if grid or now - self.printed >= 30:
            self.printed = now
            eta = duration(self.eta(global_step)) if self.train and global_step > self.train[1] else "-"  # "-": no rate yet
            loss = f"{float(metrics['losses/total']):.3f}" if metrics else "-"  # "-": no update yet (not a NaN)
            line = f"step {global_step}/{args.total_timesteps} | SPS {sps:.1f} | updates {updates} | ETA {eta} | loss {loss}"
            print(line + extra, flush=True)
        if grid:  # CleanRL's charts/* plus the losses/*, opt/* and stats/* of the last update
            for name, value in metrics.items():
                if not name.startswith("finite"):
                    writer.add_scalar(name, float(value), global_step)
            writer.add_scalar("charts/SPS", int(sps), global_step)
            writer.add_scalar("charts/updates", updates, global_step)
            writer.add_scalar("charts/UPS", (updates - self.updates0) / max(now - self.t0, 1e-9), global_step)
            writer.add_scalar("charts/train_ratio", updates * args.batch_size * args.batch_length / global_step, global_step)
            writer.add_scalar("charts/replay_size", len(replay), global_step)
            writer.add_scalar("charts/learning_rate", learning_rate_at(args, updates), global_step)
            if args.env_id.startswith("atari100k_"):
                writer.add_scalar("charts/FPS", 4 * int(sps), global_step)
        return grid


def log_episodes(writer, infos: dict, global_step: int, episodes_ach: list):
    """Print and log the episodes that ended in this step; Crafter: success rates over all training episodes so far."""
    for ep in common.episode_stats(infos):
        print(f"global_step={global_step}, episodic_return={ep['r']:.2f}")
        writer.add_scalar("charts/episodic_return", ep["r"], global_step)
        writer.add_scalar("charts/episodic_length", ep["l"], global_step)
        if ep["achievements"] is not None:
            episodes_ach.append(ep["achievements"])
            rates = common.crafter_success_rates(episodes_ach)
            writer.add_scalar("charts/crafter_score", common.crafter_score(rates), global_step)
            for name, rate in zip(common.CRAFTER_ACHIEVEMENTS, rates, strict=True):
                writer.add_scalar(f"achievements/{name}", rate, global_step)


def raise_if_not_finite(metrics: dict, updates: int, save_checkpoint):
    """After a train step: a non-finite loss or gradient (the step skipped the update) writes a checkpoint and stops."""
    if not bool(metrics["finite"]):
        bad = [k[7:] for k, v in metrics.items() if k.startswith("finite/") and not bool(v)] or ["gradients"]
        raise FloatingPointError(
            f"non-finite loss ({', '.join(bad)}) at update {updates}; the update "
            f"was skipped and a checkpoint written to {save_checkpoint()}"
        )


def log_openl_video(writer, agent: Agent, params, data: dict, key, global_step: int):
    """The open-loop video of the batch just trained on (every --video-every updates, image observations); returns key."""
    key, k = jax.random.split(key)
    video = np.asarray(agent.openl_video(params, data, k))  # (4, T, H, 4W, C)  THICK: + coarse
    writer.add_video("openl/prediction", video.transpose(0, 1, 4, 2, 3), global_step, fps=10)
    return key


def save_and_evaluate(args: Args, params, run_name: str, writer):
    """--save-model: the final model to runs/{run_name}/{exp_name}.cleanrl_model, then --eval-episodes episodes with it."""
    model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
    save_file(model_path, args, {"params": flax.serialization.to_state_dict(params)})
    print(f"model saved to {model_path}")
    if args.eval_episodes > 0:
        returns = evaluate(
            model_path,
            common.make_env,
            args.env_id,
            args.eval_episodes,
            f"{run_name}-eval",
            capture_video=args.capture_video,
            seed=args.seed,
        )
        for idx, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)


def env_spaces(env_id: str):
    """(observation space, action space) of env_id, read from one env that is closed again."""
    env = common.make_env(env_id, 0, 0, False, "")()
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces


def make_replay(args: Args, agent: Agent, seed: int) -> Replay:
    """This process's replay: --buffer-size steps (or the whole run, if shorter) over --num-envs streams; checks the RAM."""
    capacity = min(args.buffer_size, args.total_timesteps + args.num_envs) // args.num_envs
    shapes = agent.obs_space, agent.act_dim, agent.deter, agent.stoch  # what each step stores
    return Replay(capacity, args.num_envs, args.batch_length + 1, *shapes, seed, agent.ctx)  # THICK: + context


def make_writer(args: Args, run_name: str):
    """TensorBoard writer of runs/{run_name} (torch's, as in CleanRL's JAX scripts) with the flags as a table; --track:
    Weights & Biases syncs it."""
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            monitor_gym=True,
            save_code=True,
        )
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    return writer


def print_devices(args: Args):
    """The device that acts (and trains, unless --num-devices > 1 spreads each update over several)."""
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind})")
    if device.platform == "cpu":
        print("WARNING: JAX runs on the CPU. This is for debugging and tests; training from images needs a GPU.")
    if args.num_devices > 1:
        print(f"data parallel: each update of {args.batch_size} sequences runs on {args.num_devices} devices")


def main(args: Args):
    init_multihost()  # several hosts only: before anything touches the devices
    args = check_args(args)
    if args.evaluate:
        evaluate(
            args.evaluate,
            common.make_env,
            args.env_id,
            args.eval_episodes,
            "eval",
            seed=args.seed,
            gate_noise=args.eval_gate_noise,  # THICK: gate noise
        )
        return
    # every check before anything is created: the checkpoint to resume, the spaces, the replay's RAM, writable folders
    saved = Checkpoints.read(args) if args.resume else None
    run_name = saved["run_name"] if saved else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    process, processes = jax.process_index(), jax.process_count()  # several hosts: one process each (init_multihost)
    run_name += f"__p{process}" if processes > 1 else ""
    agent = Agent(args, *env_spaces(args.env_id))
    env_seed = args.seed + process * args.num_envs  # = args.seed on one host
    replay = make_replay(args, agent, env_seed)
    ckpt = Checkpoints(args, run_name, saved)
    ckpt.open_run_dir()  # checks that it (and videos/{run_name} with --capture-video) can be written, then creates it
    writer = make_writer(args, run_name)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    key = jax.random.PRNGKey(args.seed)
    print_devices(args)

    # env setup
    envs = common.make_vector_env(args.env_id, args.num_envs, env_seed, args.capture_video, run_name)
    print(compile_note(args, "init and the policy step", 0))
    key, init_key = jax.random.split(key)
    state = agent.init(init_key)
    print(f"model {args.model_size}: {count_params(state.params):,} parameters in the optimizer")
    global_step, sched_prev, episodes_ach = 0, None, []  # sched_prev: train-ratio scheduler position
    if saved is not None:
        state, key, global_step, counters = ckpt.restore(saved, state, replay)
        sched_prev, episodes_ach = counters["sched_prev"], counters["episodes_ach"]
    dp = DataParallel(agent, args.num_devices)  # the training state on the devices that share each update
    state, act_params = dp.replicate(state), None  # act_params: the parameters for acting, on the first device
    fallbacks = counters["fallbacks"] if saved is not None else 0  # THICK: fallback count, kept across --resume

    def save_checkpoint() -> str:
        counters = {"sched_prev": sched_prev, "episodes_ach": episodes_ach, "fallbacks": fallbacks}  # THICK: + fallbacks
        return ckpt.save(state, replay, global_step, key, **counters)

    # TRY NOT TO MODIFY: start the game
    obs, _ = envs.reset(seed=env_seed + global_step)  # a resumed run must not replay the first run's episodes
    flags = common.EpisodeFlags(args.num_envs)
    is_first = flags.reset()
    is_last = is_terminal = np.zeros(args.num_envs, bool)
    reward = np.zeros(args.num_envs, np.float32)
    carry = agent.initial_carry(args.num_envs)
    ratio = args.train_ratio * processes / (args.batch_size * args.batch_length)  # updates per policy step (of a process)
    metrics, last_video, progress = {}, int(state.updates), Progress(args, global_step, int(state.updates))
    changes = ChangeStats(args.num_envs, agent.image)  # THICK: how often the acting context changes
    ckpt.catch_signals()
    while global_step < args.total_timesteps and ckpt.stop is None:
        # ALGO LOGIC: act with the sampled posterior and the sampled action
        key, k = jax.random.split(key)
        act_params = act_params or dp.first(state.params)  # refreshed after every round of updates
        action, carry, (deter, stoch, context), changed = agent.policy_step(act_params, carry, obs, is_first, k)
        action = np.asarray(action)
        changes.add(writer, np.asarray(changed), is_last, obs, global_step)  # ALGO LOGIC: THICK: acting change statistics
        if not np.all(np.isfinite(action)):
            raise FloatingPointError(f"non-finite action at step {global_step}; checkpoint written to {save_checkpoint()}")
        stored_action = action * (~is_last)[:, None]  # the action stored with a last step is zeroed
        replay.add({"obs": obs, "action": stored_action, "reward": reward, "is_first": is_first, "is_last": is_last,
                    "is_terminal": is_terminal, "deter": np.asarray(deter), "stoch": np.asarray(stoch),
                    "context": np.asarray(context)})  # fmt: skip

        # TRY NOT TO MODIFY: execute the game and log data.
        obs, reward, term, trunc, infos = envs.step(to_env_action(agent, action))
        reward = reward.astype(np.float32)
        is_first, is_last, is_terminal = flags.step(term, trunc)
        global_step += args.num_envs
        log_episodes(writer, infos, global_step, episodes_ach)

        # ALGO LOGIC: training at the train ratio: replayed steps per policy step = train_ratio
        if global_step >= args.learning_starts and replay.ready():
            due, sched_prev = updates_due(global_step, sched_prev, ratio)  # the first call trains once
            for _ in range(due):
                progress.before_update()
                data, env_idx, time_idx = replay.sample(args.batch_size // processes)  # this process's rows
                key, k = jax.random.split(key)
                state, metrics, latents = dp.train_step(state, dp.split_batch(data), dp.replicate(k))
                act_params = None  # the update donated the old parameters' buffers
                fallbacks += int(metrics["thick/fallback"])  # THICK: batches without change events (psi = 1 used)
                raise_if_not_finite(metrics, int(state.updates), save_checkpoint)
                # replay context: the refreshed latents go back to replay before the next sample reads them (and before
                # the next replay.add can overwrite their slots); the finite check above has already waited for them
                replay.write_latents(env_idx, time_idx[:, 1:], *map(dp.local_rows, latents))
                if agent.image and args.video_every and int(state.updates) - last_video >= args.video_every:
                    key = log_openl_video(writer, agent, dp.first(state.params), data, key, global_step)
                    changes.log_strip(writer, global_step)  # THICK: env 0's recent frames, marked by context change
                    last_video = int(state.updates)
            progress.after_updates(global_step, int(state.updates))

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        change = f" | change rate {float(metrics['thick/change_rate']):.3f}" if metrics else " | change rate -"  # THICK
        if progress.log(writer, replay, metrics, global_step, int(state.updates), change):  # THICK: at the scalar steps
            changes.log_window(writer, global_step)
            writer.add_scalar("thick/fallback_count", fallbacks, global_step)
        if args.checkpoint_every and global_step % args.checkpoint_every < args.num_envs:
            print(f"checkpoint written to {save_checkpoint()} at global_step={global_step}")

    if changes.strip:  # THICK: the last frames of env 0, marked green where the context changed and red where not
        changes.log_strip(writer, global_step)
    # the end: a last checkpoint (always after a stop signal: then stop with the command that continues), else the model
    path = save_checkpoint() if ckpt.stop is not None or args.checkpoint_every else None
    if args.save_model and ckpt.stop is None:
        save_and_evaluate(args, state.params, run_name, writer)
    envs.close()
    writer.close()
    if ckpt.stop is not None:
        raise ckpt.stopped(global_step, path)


# ======================================================================================================================
# Appendix: fast kernels. Exact reformulations of the convolutions and of RMSNorm -> SiLU for XLA's CPU backend, called
# by the layers of section 2 (Conv, NormSiLU); each is tested against its plain form in tests/test_dreamerv3.py.
# ======================================================================================================================

# The convolutions of the image encoder and decoder as exact reformulations (same parameters, same outputs; tested
# against the plain forms in tests/test_dreamerv3.py), because XLA's CPU convolutions are slow at these shapes (few input
# channels; the max-pool's backward pass; the kernel gradient). Profiles: docs/notes/cpu-update-time.md.
#   im2col:        stack the 9 shifted copies of the padded input on the channel axis -> one matmul (K = 9 cin);
#                  the gradients are per-tap matmuls (custom VJP below). The copies cost memory traffic, so im2col pays
#                  only when the matmul is wide; a narrow output (the decoder's last layer: 12 = 4 phases x 3 colours)
#                  goes to XLA's conv instead.
#   conv + pool:   fold each 2x2 pixel block into channels (space-to-depth). The 4 output phases of a 5x5 conv at full
#                  resolution are then one 3x3 conv at half resolution (4 cin -> 4 cout, re-arranged weights), and the
#                  2x2 max-pool is a max over the 4 phases. Used up to 48 input channels; wider inputs (the last
#                  encoder layer, 8x8) use XLA's conv directly.
#   up + conv:     a 5x5 conv after nearest 2x upsampling equals, per output phase, a 3x3 conv on the low-resolution map
#                  ("sub-pixel" conv: 4 phases x 9 taps instead of 4 pixels x 25 taps); the 4 phases interleave into
#                  the high-resolution output.
# The per-layer choices come from a per-op trace of the 12m update (benchmark/speed/dreamerv3_profile.py --trace).
_DN = ("NHWC", "HWIO", "NHWC")


def _phase_taps_pool() -> np.ndarray:
    """S[u, p, a, y] = 1 iff 3x3 tap u on s2d input phase p feeds output phase a through 5x5 tap y (y = 2u + p - a)."""
    s = np.zeros((3, 2, 2, 5), np.float32)
    for u, p, a in np.ndindex(3, 2, 2):
        if 0 <= 2 * u + p - a < 5:
            s[u, p, a, 2 * u + p - a] = 1
    return s


def _phase_taps_up() -> np.ndarray:
    """T[a, u, y] = 1 iff, for output phase a, 5x5 tap y reads low-resolution tap u of a 3x3 window."""
    t = np.zeros((2, 3, 5), np.float32)
    for a, y in np.ndindex(2, 5):
        t[a, (a + y - 2) // 2 + 1, y] = 1
    return t


# The columns of conv_im2col are kh kw = 9x larger than its input. Plain autodiff keeps them from the forward to the
# backward pass (for the kernel gradient), and they were the largest buffers of an update. jax.checkpoint does not help
# on XLA:CPU: it merges the recomputation back into the forward pass (docs/notes/cpu-update-time.md). So the custom VJP
# keeps only the input and computes both gradients tap by tap, with x_ij = the input window of tap (i, j):
#   dk[i, j] = x_ij^T g        dx = sum_ij shift_ij(g k[i, j]^T)
def _after(x, g):
    """x itself, made to depend on the incoming gradient g, so that XLA computes what follows from x in the backward pass.
    Without it XLA merges a custom VJP's recomputation with the forward pass, keeping the very buffers the VJP avoids."""
    return x + jnp.zeros((), x.dtype) * g.reshape(-1)[0].astype(x.dtype)


@jax.custom_vjp
def conv_im2col(x, k):
    """'SAME' stride-1 conv as one matmul: (B, H, W, cin), (kh, kw, cin, cout) -> (B, H, W, cout)."""
    kh, kw, cin, cout = k.shape
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = jnp.concatenate([xp[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], -1)  # (B, H, W, kh kw cin)
    return (cols.reshape(-1, kh * kw * cin) @ k.reshape(-1, cout)).reshape(b, h, w, cout)


def _conv_im2col_fwd(x, k):
    return conv_im2col(x, k), (x, k)  # residuals: the input, not the columns


def _conv_im2col_bwd(res, g):
    x, k = res
    kh, kw, cin, cout = k.shape
    b, h, w, _ = x.shape
    g2 = g.reshape(-1, cout)  # (B H W, cout)
    xp = _after(jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))), g)  # tap windows copied here
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    dk = jnp.stack([xp[:, i : i + h, j : j + w].reshape(-1, cin).T @ g2 for i, j in taps]).reshape(k.shape)
    dxp = sum(
        jnp.pad((g2 @ k[i, j].T).reshape(b, h, w, cin), ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0))) for i, j in taps
    )  # (B, H + kh - 1, W + kw - 1, cin)
    return dxp[:, kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w].astype(x.dtype), dk.astype(k.dtype)


conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


# The max over the 4 pool phases with a hand-written backward: autodiff of max keeps a float32 copy of the "which phase
# was the max" mask next to its input (in the first encoder layer, as large as the layer's output); this keeps only
# the input and rebuilds the mask in the backward pass. Ties share the gradient equally, as under autodiff.
@jax.custom_vjp
def phase_max(y):  # (..., 4, C) -> (..., C)
    return y.max(-2)


def _phase_max_fwd(y):
    return y.max(-2), y


def _phase_max_bwd(y, g):
    y = _after(y, g)
    hit = (y == y.max(-2, keepdims=True)).astype(g.dtype)  # (..., 4, C)
    return (hit / hit.sum(-2, keepdims=True) * g[..., None, :],)


phase_max.defvjp(_phase_max_fwd, _phase_max_bwd)


def conv5x5_maxpool(x, kernel, bias):
    """== maxpool2(conv5x5_same(x) + bias), (B, H, W, C) -> (B, H/2, W/2, cout)."""
    b, h, w, c = x.shape
    cout = kernel.shape[-1]
    if c > 48:  # wide inputs: XLA's conv is fine; the pool as a reshape-max (its backward is cheap)
        y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME", dimension_numbers=_DN)
        return maxpool2(y) + bias.astype(x.dtype)
    xs = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)  # s2d
    s = _phase_taps_pool()
    k3 = jnp.einsum("upay,vqbx,yxio->uvpqiabo", s, s, kernel.astype(jnp.float32), precision="highest")
    k3 = k3.reshape(3, 3, 4 * c, 4 * cout).astype(x.dtype)  # 3x3 taps, (phase, cin) -> (phase, cout)
    return phase_max(conv_im2col(xs, k3).reshape(b, h // 2, w // 2, 4, cout)) + bias.astype(x.dtype)


def upsample_conv5x5(x, kernel, bias):
    """== conv5x5_same(upsample2(x)) + bias, (B, h, w, cin) -> (B, 2h, 2w, cout)."""
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    t = _phase_taps_up()
    k3 = jnp.einsum("auy,bvx,yxio->uviabo", t, t, kernel.astype(jnp.float32), precision="highest")
    k3 = k3.reshape(3, 3, cin, 4 * cout).astype(x.dtype)
    if 4 * cout < cin:  # narrow output (last decoder layer): XLA's conv beats copying 9 x cin input channels
        y = jax.lax.conv_general_dilated(x, k3, (1, 1), "SAME", dimension_numbers=_DN)
    else:
        y = conv_im2col(x, k3)  # (B, h, w, 4 cout): the 4 output phases
    y = y.reshape(b, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, cout)
    return y + bias.astype(x.dtype)


# RMSNorm -> SiLU, the pair that follows every Linear and Conv, as one function with a hand-written backward. Plain
# autodiff keeps the normalised tensor and the sigmoid of every layer for the backward pass next to its input; this
# keeps only the input y (and the scale) and recomputes the rest, which is elementwise and cheap. In float32, with
# r = rsqrt(mean(y^2) + eps), n = y r, u = n * scale, out = silu(u) = u sigmoid(u):
#   du = g sigmoid(u) (1 + u (1 - sigmoid(u)))     dscale = sum over all rows of du * n
#   dn = du * scale                                 dy = r (dn - n mean(dn * n))   (mean over the normalised axis)
def _rmsnorm_silu_fwd_math(y, scale, eps):
    y = y.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(y * y, -1, keepdims=True) + eps)
    n = y * r
    return r, n, n * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rmsnorm_silu(y, scale, eps: float):
    """silu(rmsnorm(y) * scale) over the last axis, computed in float32, returned in y's dtype: (..., C) -> (..., C)."""
    u = _rmsnorm_silu_fwd_math(y, scale, eps)[2]
    return (u * jax.nn.sigmoid(u)).astype(y.dtype)


def _rmsnorm_silu_fwd(y, scale, eps):
    return rmsnorm_silu(y, scale, eps), (y, scale)


def _rmsnorm_silu_bwd(eps, res, g):
    y, scale = res
    r, n, u = _rmsnorm_silu_fwd_math(_after(y, g), scale, eps)
    s = jax.nn.sigmoid(u)
    du = g.astype(jnp.float32) * s * (1.0 + u * (1.0 - s))
    dscale = jnp.sum(du * n, tuple(range(du.ndim - 1)))
    dn = du * scale
    dy = r * (dn - n * jnp.mean(dn * n, -1, keepdims=True))
    return dy.astype(y.dtype), dscale.astype(scale.dtype)


rmsnorm_silu.defvjp(_rmsnorm_silu_fwd, _rmsnorm_silu_bwd)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # every line reaches a redirected log at once
    thread_hook = threading.excepthook  # TensorBoard's writer thread hands its OSError to the main thread: report it once
    threading.excepthook = lambda a: None if issubclass(a.exc_type, OSError) else thread_hook(a)
    try:
        main(tyro.cli(Args))
        status, message = 0, ""
    except (UsageError, common.EnvIdError) as e:
        status, message = 2, f"error: {e}"
    except OSError as e:  # e.g. the run directory turned read-only under the TensorBoard writer
        status, message = 2, f"error: {e.strerror or e}" + (f": {os.fsdecode(e.filename)}" if e.filename else "")
    except FloatingPointError as e:
        status, message = 1, f"error: {e}"
    except Stopped as e:
        status, message = 128 + e.signum, str(e)
    for s in (signal.SIGTERM, signal.SIGINT):  # a later signal ends the shutdown quietly (no "Exception ignored in atexit")
        signal.signal(s, lambda signum, frame: os._exit(status or 128 + signum))
    if message:
        print(message, file=sys.stderr)
    sys.exit(status)
