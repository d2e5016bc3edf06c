# docs and experiment results: README.md (HIEROS section) and docs/hieros.md
r"""HIEROS (Mattes, Schlosser, Herbrich, "HIEROS: Hierarchical Imagination on Structured State Space Sequence World
Models", ICML 2024, arXiv 2310.05167) in one PyTorch file.

    python hieros_s5_torch.py --env-id atari100k_pong                  # the paper's config, 3 levels (needs a GPU)
    python hieros_s5_torch.py --env-id crafter --total-timesteps 1000000
    python hieros_s5_torch.py --env-id CartPole-v1 --model-size small --max-hierarchy 1 --train-ratio 256 \
        --batch-size 16 --batch-length 32 --total-timesteps 30000 --model-lr 3e-4 --actor-lr 3e-4 --critic-lr 3e-4
    python hieros_s5_torch.py --evaluate runs/<run>/hieros_s5_torch.cleanrl_model --eval-episodes 10
    python hieros_s5_torch.py --resume runs/<run>/checkpoint.ckpt ...  # ... = the first run's flags
    torchrun --standalone --nproc_per_node 4 hieros_s5_torch.py ...    # data parallel, 4 GPUs; --batch-size is global

A hierarchy of world-model agents: every level is a DreamerV3-style actor-critic learning in the imagination of its own
S5 world model (S5WM: a stack of S5 state-space layers in place of the GRU). Level 0 acts in the env; level L >= 1
observes the latents of level L - 1, acts every 4^L env steps, and its action is an 8x8 categorical subgoal code that
level L - 1 is rewarded for reaching (max-cosine to the decoded code), next to a novelty reward. Replay is sampled with
efficient time-balanced sampling (ETBS). Reference code: Snagnar/Hieros@ab4c593 (numerical parity checked by
tests/test_parity_hieros.py).

Decisions. The paper run, not the HEAD defaults of Snagnar/Hieros: ETBS replay with temperature 0.3, S5 dropout 0.1,
MLP 2x512 for levels >= 1, 3 levels acting/training every 4^L steps, 8x8 subgoal codes, reward weights 1.0/0.3/0.1 with
novelty only at levels >= 1, batch 16x64, train ratio 1024, horizon 16 (= --imag-horizon 15, see below), fp32.
Bugs of the original, fixed by default, each reproducible with a flag (tests/test_parity_hieros.py: with the flag the
numbers are the original's):
  action alignment in observe()   fixed: the S5 input at t is a_{t-1}           --no-action-shift
  lambda-return indexing          DreamerV3's convention: r, c of s_{t+1}       --original-return-indexing
  ETBS scale M                    fixed: M = current replay size                --etbs-max-len capacity
  actor advantage                 fixed: each head / max(1, p95 - p5)           --raw-advantage
  reward at episode ends          fixed: an episode's last record keeps the     (no flag)
                                  reward accumulated up to it; the original zeroes the accumulated reward at every
                                  is_last before storing the record, so even level 0's terminal reward was stored as 0
                                  (Snagnar/Hieros:hieros/hieros.py@ab4c593, SubActor.__call__, the `reset.any()` branch)
Open quirks of the original, decided here (see docs/hieros.md "Implementation details"):
  8-factor log-prob/entropy: summed over factors (the joint log-prob); --factor-logprob-mean restores the mean.
  subgoal AE decoder: ends in a plain Linear (the original's last LN+GELU bounds the output below by -0.17).
  novelty reward: compares symlog(h) with the reconstruction (the original compared the raw h).
  AdamW weight decay: 0 by default (the original inherited torch's 0.01 implicitly); --weight-decay 0.01.
  time limits: `truncated` is not terminal (common/ gives is_terminal = terminated only).
  one-step lag of the latent handed up a level: removed (levels filter bottom-up, then decide top-down).
  straight-through gradient of a mode (z_init of the learned initial state, the autoencoder's code): through the
  probabilities, as every sample (the original's OneHotDist.mode: through the log-probabilities).
  imagination horizon K: K imagined steps, all trained; the original's K imagines K states and trains K - 1 steps
  (its last state only bootstraps), so its 16 is our --imag-horizon 15, the default (DreamerV3's imag_length too).
Deliberate deviation: the actor output layer of every level starts scaled by 0.01 as DreamerV3's policy (a near-uniform
first policy; the original's full-scale init is nearly deterministic): --actor-init-scale 1 restores the original.

File map (numbered sections):
  0. Arguments                                        6. Subgoals: autoencoder, subgoal and novelty rewards
  1. Numeric helpers and MLPs                         7. One level, the agent, the acting loop over all levels
  2. The S5 layer (HiPPO init, ZOH, resettable scan)  8. Replay with time-balanced sampling (ETBS)
  3. Encoders and decoders                            9. Training one level; data parallel (torchrun)
  4. S5WM: the S5 world model                        10. Checkpoints, stop signals and evaluation
  5. Actor, critics, return normalisation            11. Main loop (CleanRL skeleton)
Shapes: B batch, T batch length, N = B*T imagination starts (acting: the envs), K imagination horizon, S stochastic
latents, C classes per latent, Z = S*C, D deter, H S5 width, P SSM state size, nb S5 blocks, A action dim.
"""

import collections
import contextlib
import copy
import io
import json
import math
import os
import pickletools
import random
import re
import signal
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, fields
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import common

# ======================================================================================================================
# 0. Arguments
# ======================================================================================================================


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch, envs, replay)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """use CUDA when this torch build sees a GPU (on by default; without one the run uses the CPU and says so); --no-cuda:
    the CPU"""
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
    """crafter, crafter_noreward, atari100k_<game> or any gymnasium id (default: atari100k_pong; with --evaluate: the env
    id saved in the file)"""
    total_timesteps: int = 100_000
    """total env (policy) steps, summed over envs and processes (Atari100k: 100k steps = 400k frames)"""
    num_envs: int = 1
    """the number of parallel environments (of each process under torchrun)"""
    model_size: str = "paper"
    """size preset: debug (tiny, tests/CI), small (CartPole-scale), paper (the Atari100k config of the paper)"""
    train_ratio: float = 1024.0
    """replayed steps per policy step at level 0 (1024 with 16x64 = one level-0 update per env step)"""
    batch_size: int = 16
    """replay batch: number of sequences (the global batch: under torchrun each process samples batch_size / processes)"""
    batch_length: int = 64
    """replay batch: steps per sequence (>= 2: the first step of every sequence starts the S5 afresh)"""
    learning_starts: Optional[int] = None
    """policy steps collected before the first update (default: batch_size * batch_length)"""

    # world model (S5WM)
    model_lr: float = 1e-4
    """world-model learning rate (AdamW, eps 1e-8, clip 1000, linear warmup)"""
    model_warmup: int = 1000
    """linear learning-rate warmup of the world model, in updates"""
    dropout: float = 0.1
    """dropout at both sites of every double S5 block (paper era 0.1; 0.0 at the original's HEAD)"""
    free_nats: float = 1.0
    """KL free bits per sample"""
    kl_dyn_scale: float = 0.5
    """scale of KL(sg(q) || p)"""
    kl_rep_scale: float = 0.1
    """scale of KL(q || sg(p))"""
    action_shift: bool = True
    """feed a_{t-1} to the S5 at step t (fixed); --no-action-shift feeds a_t as the original's observe() did"""
    reward_loss_at_first: bool = True
    """train the reward head on the first observation of each episode too (as the original; its reward is 0 by the env
    convention and caused by no action: --no-reward-loss-at-first masks it)"""
    weight_decay: float = 0.0
    """decoupled AdamW weight decay of all optimisers (the original used torch's implicit 0.01)"""
    # actor / critic
    imag_horizon: int = 15
    """imagination horizon K: imagined (and trained) steps in each level's own steps; 15 = the original's 16 states"""
    gamma: float = 0.997
    """discount factor"""
    lmbda: float = 0.95
    """lambda of the lambda-returns"""
    actor_lr: float = 3e-5
    """actor learning rate (AdamW, eps 1e-5, clip 100)"""
    critic_lr: float = 3e-5
    """critic learning rate (one critic per reward head, AdamW, eps 1e-5, clip 100)"""
    actor_init_scale: float = 0.01
    """scale of the actor's output-layer weights at init, every level (0.01 = DreamerV3's policy outscale: a near-uniform
    first policy; 1 = the original's init, whose first policy is nearly deterministic; 0 = exactly uniform)"""
    entropy_coef: float = 3e-4
    """actor entropy regulariser eta"""
    behavior_starts: int = 0
    """train calls (= level-0 updates) with world-model-only updates before actors and critics start training (0 = from
    the first update, as in the paper; on small problems it keeps the initial random policy until the reward head learned)"""
    slow_critic_mix: float = 0.02
    """EMA mix of the slow critic, every update"""
    original_return_indexing: bool = False
    """use r(s_t), c(s_t) in the lambda-return as the original (default: DreamerV3's r(s_{t+1}), c(s_{t+1}))"""
    raw_advantage: bool = False
    """use the original's unnormalised advantage (default: each head divided by its return scale max(1, p95 - p5))"""
    factor_logprob_mean: bool = False
    """average log-prob/entropy over the 8 subgoal factors as the original (default: sum, the joint log-prob)"""
    # hierarchy
    max_hierarchy: int = 3
    """number of levels (1 = flat S5-Dreamer without subgoals)"""
    subactor_update_every: int = 4
    """level L acts every subactor_update_every^L env steps of its env's episode, and at the episode's last step"""
    subactor_train_every: int = 4
    """level L trains on every subactor_train_every^L-th train call"""
    subactor_encode_intermediate: int = 4
    """levels >= 1 observe the last N latents of the level below (FIFO)"""
    extrinsic_reward_weight: float = 1.0
    """weight of the extrinsic head in the advantage mix"""
    subgoal_reward_weight: float = 0.3
    """weight of the subgoal (max-cosine) head"""
    novelty_reward_weight: float = 0.1
    """weight of the novelty (autoencoder error) head"""
    novelty_only_higher_level: bool = True
    """novelty reward only at levels >= 1 (the paper sweep); --no-novelty-only-higher-level adds it at level 0"""
    subgoal_lr: float = 1e-4
    """subgoal autoencoder learning rate (AdamW, eps 1e-6, clip 100)"""
    subgoal_kl_scale: float = 0.5
    """scale of KL(code || uniform) in the subgoal autoencoder loss"""
    # replay
    replay: str = "etbs"
    """replay sampler: etbs (efficient time-balanced sampling) or uniform"""
    replay_temperature: float = 0.3
    """ETBS temperature tau (0 = uniform, 1 = pure ETBS)"""
    etbs_max_len: str = "current"
    """ETBS scale M: current (the replay size; fixed) or capacity (the original's wiring)"""
    buffer_size: int = 1_000_000
    """replay capacity per level (and process), in steps summed over envs (allocated only up to --total-timesteps)"""
    # speed
    compile: bool = False
    """torch.compile the world-model loss (off by default)"""
    bf16_autocast: bool = False
    """bfloat16 autocast for the dense layers (the S5 scan stays in float32); fast on CPUs with AMX"""
    threads: int = 0
    """torch intra-op CPU threads (0 = torch's default, except 1 for the debug preset: tiny ops lose to thread overhead)"""

    # logging, checkpoints, evaluation
    log_every: int = 1000
    """progress line and TensorBoard scalars at every multiple of this many policy steps (and a progress line at least
    every 30 s); the scalars are the only host syncs of training"""
    checkpoint_every: int = 0
    """write the full training state to runs/{run_name}/checkpoint.ckpt (+ its replay file) at every multiple of N policy
    steps (0: only when stopped by SIGTERM or Ctrl-C)"""
    checkpoint_replay: bool = True
    """include the replay buffers in checkpoints (Atari100k at the paper size: ~1.2 GB on disk; without them a resume
    starts with empty replays)"""
    resume: Optional[str] = None
    """path of a runs/{run_name}/checkpoint.ckpt to continue from (same flags; the step counter continues and the run
    logs into that run directory)"""
    eval_episodes: int = 10
    """greedy episodes of the evaluation after training (with --save-model) or with --evaluate"""
    evaluate: Optional[str] = None
    """path of a .cleanrl_model or checkpoint.ckpt: only evaluate it and exit (the env id is read from the file unless
    --env-id is given)"""


# Size presets. `paper`: the paper run (Snagnar/Hieros experiments/atari100k_sweep.yml over configs.yaml); `small` is a
# CartPole-scale model, `debug` the tiny one of tests and CI.
SIZES = {
    "debug": dict(stoch=4, classes=4, deter=16, hidden=16, s5_width=16, s5_state=8, s5_init_blocks=2, s5_blocks=1,
                  cnn_depth=4, mlp_units=32, mlp_layers=1, head_units=32, head_layers=1),
    "small": dict(stoch=8, classes=8, deter=64, hidden=64, s5_width=64, s5_state=16, s5_init_blocks=2, s5_blocks=1,
                  cnn_depth=8, mlp_units=128, mlp_layers=2, head_units=64, head_layers=2),
    "paper": dict(stoch=32, classes=32, deter=256, hidden=256, s5_width=256, s5_state=128, s5_init_blocks=4, s5_blocks=4,
                  cnn_depth=24, mlp_units=512, mlp_layers=2, head_units=256, head_layers=2),
}  # fmt: skip
CODE_FACTORS, CODE_CLASSES = 8, 8  # subgoal code: 8 categorical factors with 8 classes each -> 64-d
REWARD_BINS = 255  # two-hot bins on [-20, 20] in symlog space
# The standard deviation of a standard normal truncated to [-2, 2]: a truncated normal of std s / TRUNC_STD has std s.
TRUNC_STD = 0.87962566103423978
IMAGE_STRIDE = 16  # the CNN encoder halves the image side 4 times: image sides must be multiples of 16

# Flags that may differ between a checkpoint and the resuming run.
RESUME_FREE = {
    "exp_name", "track", "wandb_project_name", "wandb_entity", "capture_video", "save_model", "total_timesteps",
    "log_every", "checkpoint_every", "checkpoint_replay", "resume", "eval_episodes", "evaluate", "cuda", "compile",
    "torch_deterministic", "threads",
}  # fmt: skip

# A first look on a CPU: the CartPole recipe of the README's quick start (printed when a CPU run would take hours).
QUICK_START = (
    f"python {os.path.basename(__file__)} --env-id CartPole-v1 --model-size small --batch-size 16 --batch-length 32 "
    "--train-ratio 256 --model-lr 3e-4 --actor-lr 3e-4 --critic-lr 3e-4 --max-hierarchy 1 --total-timesteps 15000"
)


# Data parallel: torchrun (torch.distributed.run) starts WORLD processes and sets these variables in each; a plain
# `python hieros_s5_torch.py` sets none of them, so WORLD = 1, RANK = 0 and no data-parallel branch below runs.
WORLD = int(os.environ.get("WORLD_SIZE", "1"))  # processes of this run (all hosts)
RANK = int(os.environ.get("RANK", "0"))  # this process: rank 0 logs, evaluates and writes the checkpoint
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))  # this process on its host: its GPU is cuda:LOCAL_RANK


class UsageError(Exception):
    """Bad input (or a directory that cannot be written): reported as one line on stderr with exit status 2."""


class Stopped(Exception):
    """SIGTERM or Ctrl-C: the run stops (after writing a checkpoint) with exit status 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def check_args(args: Args) -> Args:
    """Validate the flags and fill in the defaults that depend on others; raises UsageError with a one-line message."""
    if args.evaluate:  # evaluation only: the model's own flags come from the file, the env id too unless given
        if args.eval_episodes < 1:
            raise UsageError(f"--eval-episodes must be >= 1 with --evaluate, got {args.eval_episodes}")
        if args.env_id is not None:
            common.check_env_id(args.env_id)
        return args
    args.env_id = "atari100k_pong" if args.env_id is None else args.env_id
    common.check_env_id(args.env_id)  # raises common.EnvIdError for an unknown id
    choices = {"model_size": SIZES, "replay": ("etbs", "uniform"), "etbs_max_len": ("current", "capacity")}
    for name, allowed in choices.items():  # plain str flags (not Literal), so that a bad value is a one-line error too
        if getattr(args, name) not in allowed:
            raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got '{getattr(args, name)}'")
    positive = ["batch_size", "num_envs", "total_timesteps", "max_hierarchy", "imag_horizon", "log_every"]
    for name in positive + [f"subactor_{k}" for k in ("update_every", "train_every", "encode_intermediate")]:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size % WORLD:  # data parallel: every process samples batch_size / WORLD sequences of the global batch
        raise UsageError(f"--batch-size {args.batch_size} (the global batch) must be divisible by the {WORLD} processes")
    if args.batch_length < 2:  # step 0 of every sampled window only starts the S5 afresh: one step teaches no dynamics
        raise UsageError(f"--batch-length must be >= 2, got {args.batch_length}")
    for name in ("train_ratio", "model_lr", "actor_lr", "critic_lr", "subgoal_lr"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0.0 <= args.replay_temperature <= 1.0:
        raise UsageError(f"--replay-temperature must lie in [0, 1], got {args.replay_temperature}")
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be >= 0 (0: no evaluation after --save-model), got {args.eval_episodes}")
    if args.learning_starts is None:
        args.learning_starts = args.batch_size * args.batch_length
    if args.learning_starts < 0:
        raise UsageError(f"--learning-starts must be >= 0, got {args.learning_starts}")
    if args.total_timesteps < args.learning_starts:
        raise UsageError(
            f"--total-timesteps {args.total_timesteps} is below --learning-starts {args.learning_starts}, so no update "
            f"would run: raise --total-timesteps to at least {args.learning_starts}, or lower --learning-starts (default: "
            "batch size * batch length)"
        )
    updates, needed = updates_possible(args)
    if updates < 1:
        raise UsageError(
            f"--total-timesteps {args.total_timesteps} leaves too few policy steps after --learning-starts "
            f"{args.learning_starts} for one update at --train-ratio {args.train_ratio:g} with batch {args.batch_size} x "
            f"{args.batch_length}: raise --total-timesteps to at least {needed}"
        )
    capacity = replay_capacity(args) // args.num_envs
    if capacity < args.batch_length:
        raise UsageError(
            f"the replay holds {capacity} steps per env (--buffer-size {args.buffer_size}, capped at --total-timesteps), "
            f"fewer than --batch-length {args.batch_length}"
        )
    return args


def updates_possible(args: Args) -> tuple[int, int]:
    """(level-0 updates the train-ratio schedule of main() runs in a fresh run, the --total-timesteps that one needs).
    Every policy step from --learning-starts on adds train_ratio / (B T) updates' worth of credit; a loop iteration makes
    num_envs * WORLD policy steps (the envs of all processes)."""
    e, per_step = args.num_envs * WORLD, args.train_ratio / (args.batch_size * args.batch_length)
    first = max(1, -(-args.learning_starts // e))  # the first loop iteration k with global_step = k e >= learning_starts
    steps = max(0, -(-args.total_timesteps // e) - first + 1)  # iterations from there on
    return int(steps * e * per_step + 1e-9), (first - 1 + math.ceil(1.0 / (e * per_step) - 1e-9)) * e


def replay_capacity(args: Args) -> int:
    """Steps the replay of each level allocates, summed over envs: --buffer-size, but no more than the run can write
    (data parallel: per process, which writes its share of --total-timesteps)."""
    return min(args.buffer_size, -(-args.total_timesteps // WORLD) + args.num_envs)


# ======================================================================================================================
# 1. Numeric helpers: symlog, two-hot, straight-through categoricals, MLPs, initialisers
# ======================================================================================================================


def symlog(x):
    return torch.sign(x) * torch.log1p(x.abs())  # symlog(x) = sign(x) ln(1 + |x|)


def symexp(x):
    return torch.sign(x) * torch.expm1(x.abs())  # inverse of symlog


class TwoHot:
    """Categorical over 255 bins placed uniformly on [-20, 20] in symlog space (DreamerV3's reward / value head)."""

    def __init__(self, logits):
        self.logits = logits.float()  # (..., 255)
        self.bins = torch.linspace(-20.0, 20.0, REWARD_BINS, device=logits.device)

    def mean(self):  # E[y] = symexp(sum_k p_k b_k)
        return symexp((self.logits.softmax(-1) * self.bins).sum(-1))

    def log_prob(self, y):  # log p(y) = sum_k twohot_k(symlog y) log p_k
        x = symlog(y.float()).clamp(-20.0, 20.0)
        below = (torch.bucketize(x, self.bins, right=True) - 1).clamp(0, REWARD_BINS - 1)
        above = (below + 1).clamp(max=REWARD_BINS - 1)
        span = self.bins[above] - self.bins[below]
        w_above = torch.where(span > 0, (x - self.bins[below]) / span.clamp(min=1e-8), torch.zeros_like(x))
        target = F.one_hot(below, REWARD_BINS) * (1 - w_above)[..., None] + F.one_hot(above, REWARD_BINS) * w_above[..., None]
        return (target * self.logits.log_softmax(-1)).sum(-1)


def unimix_probs(logits, unimix=0.01):
    """p = (1 - u) softmax(logits) + u / C: every class keeps some mass (DreamerV3)."""
    return (1 - unimix) * logits.float().softmax(-1) + unimix / logits.shape[-1]


def onehot_straight_through(probs, sample=True):
    """One-hot sample (Gumbel-max) or mode of `probs` (..., C), with the straight-through gradient of probs.

    The forward value is exactly one-hot: onehot + (probs - sg(probs)) adds an exact zero.
    """
    if sample:
        u = torch.rand_like(probs).clamp(1e-10, 1.0 - 1e-7)  # Gumbel-max: argmax(log p + g), g = -log(-log u)
        gumbel = -torch.log(-torch.log(u))
        index = (probs.log() + gumbel).argmax(-1)
    else:
        index = probs.argmax(-1)
    return F.one_hot(index, probs.shape[-1]).to(probs.dtype) + (probs - probs.detach())


def categorical_entropy(probs):
    return -(probs * probs.clamp(min=1e-12).log()).sum(-1)


def mlp(inp, units, layers, out=None, act=nn.SiLU, bias_out=True):
    """layers x [Linear(no bias) -> LayerNorm(eps 1e-3) -> act], then an optional output Linear."""
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, units, bias=False), nn.LayerNorm(units, eps=1e-3), act()]
        d = units
    if out is not None:
        mods.append(nn.Linear(d, out, bias=bias_out))
    return nn.Sequential(*mods)


def dreamer_init(module):
    """Truncated normal with fan_avg variance (the Dreamer `weight_init`) for Linear and conv layers."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel() if isinstance(m, nn.Linear) else m.weight.shape[1] * m.weight[0, 0].numel()
            fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.dim() > 2 else 1)
            std = math.sqrt(1.0 / ((fan_in + fan_out) / 2)) / TRUNC_STD
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def zero_last(seq):
    """Zero the output layer of a head (reward and critic start by predicting 0)."""
    nn.init.zeros_(seq[-1].weight)
    nn.init.zeros_(seq[-1].bias)


# ======================================================================================================================
# 2. The S5 layer: HiPPO-LegS init, ZOH discretisation, resettable parallel scan, recurrent step
# ======================================================================================================================


def make_hippo_legs(n):
    """DPLR form of HiPPO-LegS (S4/S5): returns Lambda (n,) complex and the unitary eigenvectors V (n, n).

    A_nk = -sqrt((2n+1)(2k+1)) for n > k, A_nn = -(n+1), 0 above the diagonal;  P_n = sqrt(n + 1/2);
    S = A + P P^T = -1/2 I + (skew-symmetric).  -i * skew is Hermitian -> eigh gives real w and unitary V, so
    S = V diag(-1/2 + i w) V^H  and  Lambda = -1/2 + i w.
    """
    q = np.sqrt(2 * np.arange(n) + 1.0)
    a = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(n) + 1.0)
    p = np.sqrt(np.arange(n) + 0.5)
    s = a + np.outer(p, p)
    diag = np.diagonal(s)  # all -0.5
    w, v = np.linalg.eigh(-1j * (s - np.diag(diag)))
    return diag.mean() + 1j * w, v


def hippo_init(p, j):
    """J independent HiPPO-LegS blocks of size P/J: Lambda tiled J times (P,), V block diagonal (P, P)."""
    lam, v = make_hippo_legs(p // j)
    vb = np.zeros((p, p), np.complex128)
    for b in range(j):
        vb[b * (p // j) : (b + 1) * (p // j), b * (p // j) : (b + 1) * (p // j)] = v
    return np.tile(lam, j), vb


def discretize_zoh(lam, b_tilde, delta):
    """Zero-order hold: Lambda_bar = exp(Lambda Delta),  B_bar = (Lambda_bar - 1) / Lambda * B_tilde."""
    lam_bar = torch.exp(lam * delta)  # (P,)
    return lam_bar, ((lam_bar - 1) / lam)[:, None] * b_tilde  # (P,), (P, H)


def reset_combine(a_i, b_i, d_i, a_j, b_j, d_j):
    """The resettable scan operator, earlier element i with later element j (Lu et al. 2023):

    (a_i, b_i, d_i) . (a_j, b_j, d_j) = (a_j, b_j, d_j)                    if d_j = 1
                                      = (a_j a_i, a_j b_i + b_j, d_i)      otherwise
    d = 1 means "this segment contains a reset", so nothing before it leaks through.
    """
    keep = 1 - d_j
    return a_j * (keep * a_i + d_j), b_j + keep * a_j * b_i, torch.maximum(d_i, d_j)


def resettable_scan(a, b, d):
    """Inclusive Hillis-Steele scan of reset_combine along time (dim 1): log2(T) vectorised rounds, no time loop.

    a, b: (B, T, P) complex; d: (B, T, 1) float in {0, 1}. Returns x (B, T, P) with
    x_t = (1 - d_t) a_t x_{t-1} + b_t,  x_0 = 0   (a reset makes x_t = b_t).
    """
    k, t = 1, b.shape[1]
    while k < t:  # round k: element t absorbs the segment ending at t - k (identity (1, 0, 0) before the start)
        a_i = torch.cat([torch.ones_like(a[:, :k]), a[:, :-k]], 1)
        b_i = torch.cat([torch.zeros_like(b[:, :k]), b[:, :-k]], 1)
        d_i = torch.cat([torch.zeros_like(d[:, :k]), d[:, :-k]], 1)
        a, b, d = reset_combine(a_i, b_i, d_i, a, b, d)
        k *= 2
    return b


def lecun_trunc_normal(shape, fan_in):
    std = math.sqrt(1.0 / fan_in) / TRUNC_STD
    return nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float64), 0.0, std, -2 * std, 2 * std)


class S5SSM(nn.Module):
    """Diagonal complex SSM: x_t = Lambda_bar x_{t-1} + B_bar u_t,  y_t = Re(C x_t) + D u_t.

    Full P eigenvalues (conjugate pairs kept, no factor 2), as in the Hieros code; one timescale per state.
    """

    def __init__(self, h, p, j, dt_min=1e-3, dt_max=1e-1):
        super().__init__()
        lam, v = hippo_init(p, j)  # (P,), (P, P)
        v = torch.from_numpy(v)
        self.lambda_re = nn.Parameter(torch.tensor(lam.real, dtype=torch.float32))  # (P,) -0.5, not clipped
        self.lambda_im = nn.Parameter(torch.tensor(lam.imag, dtype=torch.float32))  # (P,)
        b = v.conj().T @ lecun_trunc_normal((p, h), p).to(v.dtype)  # B_tilde = V^-1 B = V^H B    (P, H)
        self.B = nn.Parameter(torch.stack([b.real, b.imag], -1).float())  # (P, H, 2)
        c = lecun_trunc_normal((h, p, 2), p * h)
        c = torch.complex(c[..., 0], c[..., 1]) @ v  # C_tilde = C V                                 (H, P)
        self.C = nn.Parameter(torch.stack([c.real, c.imag], -1).float())  # (H, P, 2)
        self.D = nn.Parameter(torch.rand(h))  # U[0, 1) as the original
        self.log_step = nn.Parameter(torch.empty(p).uniform_(math.log(dt_min), math.log(dt_max)))  # (P,)
        self.frozen = None  # (Lambda_bar, B_bar) cached while the parameters cannot change (see frozen_ssms)

    def discrete(self):
        if self.frozen is not None:
            return self.frozen
        lam = torch.complex(self.lambda_re, self.lambda_im)
        return discretize_zoh(lam, torch.complex(self.B[..., 0], self.B[..., 1]), self.log_step.exp())

    def _bu(self, u, b_bar):  # B_bar u with real matmuls: (..., H) -> (..., P) complex
        return torch.complex(u @ b_bar.real.T, u @ b_bar.imag.T)

    def _y(self, x, u):  # y = Re(C x) + D u = C_re x_re - C_im x_im + D u           (..., H)
        return x.real @ self.C[..., 0].T - x.imag @ self.C[..., 1].T + self.D * u

    def forward(self, u, reset):
        """Parallel form. u (B, T, H), reset (B, T) -> y (B, T, H), x (B, T, P) complex, from x_0 = 0."""
        with torch.autocast(u.device.type, enabled=False):
            u = u.float()
            lam_bar, b_bar = self.discrete()
            bu = self._bu(u, b_bar)  # (B, T, P)
            x = resettable_scan(lam_bar.expand_as(bu), bu, reset.float()[..., None])
            return self._y(x, u), x

    def step(self, u, x):
        """Recurrent form. u (N, H), x (N, P) complex -> y (N, H), x' (N, P)."""
        with torch.autocast(u.device.type, enabled=False):
            u = u.float()
            lam_bar, b_bar = self.discrete()
            x = lam_bar * x + self._bu(u, b_bar)
            return self._y(x, u), x


class frozen_ssms:
    """Context manager: discretise every SSM of `module` once (no grad) and reuse it for all recurrent steps inside,
    instead of once per step and SSM (imagination runs 16 steps x 8 SSMs). Acting does not use it: one step per level
    and env step discretises once anyway."""

    def __init__(self, module):
        self.ssms = [m for m in module.modules() if isinstance(m, S5SSM)]

    def __enter__(self):
        with torch.no_grad():
            for m in self.ssms:
                m.frozen = None
                m.frozen = tuple(x.detach() for x in m.discrete())

    def __exit__(self, *exc):
        for m in self.ssms:
            m.frozen = None


class eval_mode:
    """Context manager: `module` and all its submodules in eval mode inside (dropout off), each one's own mode restored
    on exit. Imagination runs inside it: the original imagines with the world model in eval mode
    (Snagnar/Hieros:hieros/models.py@ab4c593, `ImagBehavior._train` calls `self._world_model.eval()`), and acting runs
    in eval mode too, so the actor learns on the dynamics it acts in. The world-model loss still trains with dropout."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training


class DoubleS5Block(nn.Module):
    """Pre-LN residual block with two SSMs (the original's ReworkedDoubleS5Block, ff_layers=0, attn_linear):

    x <- x + Dropout(GELU(W1 S5_1(LN1(x))));  x <- x + Dropout(GELU(W2 S5_2(LN2(x))));  out = x + LN3(x)
    Block state = concat of the two SSM states (2P complex).
    """

    def __init__(self, h, p, j, dropout):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(h), nn.LayerNorm(h), nn.LayerNorm(h)
        self.ssm1, self.ssm2 = S5SSM(h, p, j), S5SSM(h, p, j)
        self.w1, self.w2 = nn.Linear(h, h, bias=False), nn.Linear(h, h, bias=False)
        self.dropout = dropout

    def _mix(self, w, y):
        return F.dropout(F.gelu(w(y)), self.dropout, self.training)

    def forward(self, x, reset):  # x (B, T, H) -> (B, T, H), state (B, T, 2P)
        y1, s1 = self.ssm1(self.ln1(x), reset)
        x = x + self._mix(self.w1, y1)
        y2, s2 = self.ssm2(self.ln2(x), reset)
        x = x + self._mix(self.w2, y2)
        return x + self.ln3(x), torch.cat([s1, s2], -1)

    def step(self, x, state):  # x (N, H), state (N, 2P)
        p = state.shape[-1] // 2
        y1, s1 = self.ssm1.step(self.ln1(x), state[:, :p])
        x = x + self._mix(self.w1, y1)
        y2, s2 = self.ssm2.step(self.ln2(x), state[:, p:])
        x = x + self._mix(self.w2, y2)
        return x + self.ln3(x), torch.cat([s1, s2], -1)


class S5Stack(nn.Module):
    """num_blocks double blocks; the state of the stack is (N, num_blocks, 2P) complex."""

    def __init__(self, h, p, j, num_blocks, dropout):
        super().__init__()
        self.blocks = nn.ModuleList([DoubleS5Block(h, p, j, dropout) for _ in range(num_blocks)])
        self.state_shape = (num_blocks, 2 * p)

    def forward(self, u, reset):  # u (B, T, H), reset (B, T) -> y (B, T, H), states (B, T, nb, 2P)
        states = []
        for block in self.blocks:
            u, s = block(u, reset)
            states.append(s)
        return u, torch.stack(states, -2)

    def step(self, u, state):  # u (N, H), state (N, nb, 2P) -> y (N, H), state'
        new = []
        for i, block in enumerate(self.blocks):
            u, s = block.step(u, state[:, i])
            new.append(s)
        return u, torch.stack(new, 1)


# ======================================================================================================================
# 3. Encoders and decoders: CNN for images, symlog MLP for vectors (CartPole, and the latents of levels >= 1)
# ======================================================================================================================


class ChannelLN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-3)

    def forward(self, x):  # (N, C, H, W): normalise over channels
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """64x64x3 uint8 -> 4 stride-2 k4 convs with depth*{1,2,4,8} channels, channel-LN + SiLU -> 16*8*depth."""

    def __init__(self, shape, depth):
        super().__init__()
        layers, c = [], shape[-1]
        for i in range(4):
            layers += [nn.Conv2d(c, depth * 2**i, 4, 2, 1, bias=False), ChannelLN(depth * 2**i), nn.SiLU()]
            c = depth * 2**i
        self.net = nn.Sequential(*layers)
        self.out_dim = c * (shape[0] // 16) * (shape[1] // 16)

    def forward(self, obs):  # (..., 64, 64, 3) uint8 -> (..., E)
        lead = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.net(x).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """feat -> Linear -> (8*depth, 4, 4) -> 4 transposed convs -> 64x64x3 in [-0.5, 0.5] units."""

    def __init__(self, feat, shape, depth):
        super().__init__()
        self.shape, self.c0 = shape, 8 * depth
        self.inp = nn.Linear(feat, self.c0 * (shape[0] // 16) * (shape[1] // 16))
        layers, c = [], self.c0
        for i in range(4):
            out = shape[-1] if i == 3 else c // 2
            layers.append(nn.ConvTranspose2d(c, out, 4, 2, 1, bias=i == 3))
            if i < 3:
                layers += [ChannelLN(out), nn.SiLU()]
            c = out
        self.net = nn.Sequential(*layers)

    def loss(self, feat, obs):  # MSE summed over pixels: (B, T)
        lead = feat.shape[:-1]
        x = self.inp(feat.reshape(-1, feat.shape[-1])).reshape(-1, self.c0, self.shape[0] // 16, self.shape[1] // 16)
        pred = self.net(x).permute(0, 2, 3, 1).reshape(*lead, *self.shape).float()
        target = obs.float() / 255.0 - 0.5
        return ((pred - target) ** 2).sum((-3, -2, -1))


class MLPEncoder(nn.Module):
    def __init__(self, dim, units, layers):
        super().__init__()
        self.net, self.out_dim = mlp(dim, units, layers), units

    def forward(self, obs):  # symlog inputs
        return self.net(symlog(obs.float()))


class MLPDecoder(nn.Module):
    def __init__(self, feat, dim, units, layers):
        super().__init__()
        self.net = mlp(feat, units, layers, out=dim)

    def loss(self, feat, obs):  # symlog-MSE summed over dimensions
        return ((self.net(feat).float() - symlog(obs.float())) ** 2).sum(-1)


# ======================================================================================================================
# 4. S5WM: the S5 world model (Snagnar/Hieros:hieros/networks.py Seq2SeqDynamics)
# ======================================================================================================================


def kl_categorical(p_probs, q_probs):
    """KL(p || q) summed over the stochastic variables: (..., S, C) -> (...)."""
    return (p_probs * (p_probs.clamp(min=1e-12).log() - q_probs.clamp(min=1e-12).log())).sum((-2, -1))


def kl_loss(post_logits, prior_logits, free=1.0, dyn_scale=0.5, rep_scale=0.1):
    """dyn 0.5 max(free, KL(sg q || p)) + rep 0.1 max(free, KL(q || sg p)), per sample (free bits: no gradient below)."""
    q, p = unimix_probs(post_logits), unimix_probs(prior_logits)  # (..., S, C)
    dyn = kl_categorical(q.detach(), p)
    rep = kl_categorical(q, p.detach())
    return dyn_scale * dyn.clamp(min=free) + rep_scale * rep.clamp(min=free), dyn, rep


class S5WM(nn.Module):
    """Posterior from the embedding only, prior from the S5 output path, deter from the S5 hidden states.

    latent state: z (N, S*C) one-hot, h (N, D) = symlog(W_s Re[x] + b_s), x (N, nb, 2P) complex SSM states.
    """

    def __init__(self, obs_shape, image, act_dim, cfg, args, vector_units):
        super().__init__()
        self.S, self.C, self.D = cfg["stoch"], cfg["classes"], cfg["deter"]
        self.Z, self.A, self.action_shift = self.S * self.C, act_dim, args.action_shift
        h, feat = cfg["s5_width"], self.S * self.C + cfg["deter"]
        if image:
            self.encoder = ConvEncoder(obs_shape, cfg["cnn_depth"])
            self.decoder = ConvDecoder(feat, obs_shape, cfg["cnn_depth"])
        else:
            self.encoder = MLPEncoder(int(np.prod(obs_shape)), vector_units, cfg["mlp_layers"])
            self.decoder = MLPDecoder(feat, int(np.prod(obs_shape)), vector_units, cfg["mlp_layers"])
        self.obs_out = mlp(self.encoder.out_dim, cfg["hidden"], 1, out=self.Z)  # posterior logits
        self.inp = nn.Sequential(nn.Linear(self.Z + act_dim, h, bias=False), nn.LayerNorm(h, eps=1e-3), nn.SiLU())
        self.stack = S5Stack(h, cfg["s5_state"], cfg["s5_init_blocks"], cfg["s5_blocks"], args.dropout)
        self.seq_out = nn.Linear(h, self.D)  # "raw deter" h~
        self.img_out = mlp(self.D, cfg["hidden"], 1, out=self.Z)  # prior logits
        self.state_out = nn.Linear(cfg["s5_blocks"] * 2 * cfg["s5_state"], self.D)  # state_as_deter
        self.init_w = nn.Parameter(torch.zeros(self.D))  # learned initial state (zero init)
        self.reward = mlp(feat, cfg["head_units"], cfg["head_layers"], out=REWARD_BINS)
        self.cont = mlp(feat, cfg["head_units"], cfg["head_layers"], out=1)
        dreamer_init(self)
        zero_last(self.reward)

    def initial(self, n, device=None):
        """h_init = GELU(W), z_init = mode(prior(h_init)) with the straight-through gradient (so W learns), x = 0."""
        h = F.gelu(self.init_w)
        z = onehot_straight_through(unimix_probs(self.img_out(h).reshape(self.S, self.C).float()), sample=False).reshape(-1)
        x = torch.zeros(n, *self.stack.state_shape, dtype=torch.complex64, device=h.device)
        return dict(z=z.expand(n, -1), h=h.expand(n, -1), x=x)

    def _deter(self, x):  # h = symlog(W_s Re[x^1..x^nb] + b_s)
        return symlog(self.state_out(x.real.flatten(-2)))

    def post(self, embed, sample=True):  # q(z_t | o_t): logits (..., S, C), z (..., S*C)
        logits = self.obs_out(embed).reshape(*embed.shape[:-1], self.S, self.C).float()
        return logits, onehot_straight_through(unimix_probs(logits), sample).flatten(-2)

    def observe(self, embed, action, is_first, z=None):
        """Fully parallel filtering over a sequence. embed (B, T, E), action (B, T, A), is_first (B, T).

        zin_t = z_{t-1} (z_init at is_first), ain_t = a_{t-1} (0 at is_first; a_t with --no-action-shift),
        u_t = SiLU(LN(W_in [zin_t; ain_t])),  (y, x) = S5Stack(u; reset = is_first),  prior = f_img(W_o y + b_o).
        """
        b, t = is_first.shape
        post_logits, z_s = self.post(embed)
        z = z_s if z is None else z
        init = self.initial(b)
        first = is_first.float()[..., None]  # (B, T, 1)
        zin = torch.cat([init["z"][:, None], z[:, :-1]], 1)
        zin = first * init["z"][:, None] + (1 - first) * zin
        ain = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1) if self.action_shift else action
        ain = ain * (1 - first)
        y, x = self.stack(self.inp(torch.cat([zin, ain], -1)), is_first)  # (B, T, H), (B, T, nb, 2P)
        prior_logits = self.img_out(self.seq_out(y)).reshape(b, t, self.S, self.C).float()
        return dict(z=z, h=self._deter(x), x=x), post_logits, prior_logits

    def img_step(self, state, action, sample=True):
        """One prior step: u = SiLU(LN(W_in [z; a])); S5 step; z' ~ f_img(W_o y + b_o); h' = symlog(W_s Re x' + b_s)."""
        y, x = self.stack.step(self.inp(torch.cat([state["z"], action], -1)), state["x"])
        logits = self.img_out(self.seq_out(y)).reshape(-1, self.S, self.C).float()
        z = onehot_straight_through(unimix_probs(logits), sample).flatten(-2)
        return dict(z=z, h=self._deter(x), x=x), logits

    def obs_step(self, state, action, embed, is_first, z=None):
        """Recurrent filtering: reset to the initial state where is_first, prior step, posterior from embed only."""
        first = is_first.float()[:, None]
        init = self.initial(first.shape[0])
        state = {k: torch.where(first.bool() if k != "x" else first.bool()[..., None], init[k], v) for k, v in state.items()}
        prior, prior_logits = self.img_step(state, action * (1 - first), sample=False)
        post_logits, z_s = self.post(embed)
        return dict(z=z_s if z is None else z, h=prior["h"], x=prior["x"]), post_logits, prior_logits

    @staticmethod
    def feat(state):  # [z; h]  (..., S*C + D)
        return torch.cat([state["z"], state["h"]], -1)


# ======================================================================================================================
# 5. Actor, critics, return normalisation, lambda-returns (Snagnar/Hieros:hieros/models.py ImagBehavior)
# ======================================================================================================================


class Actor(nn.Module):
    """kind: 'discrete' (one-hot, unimix 1%), 'continuous' (Normal, mean tanh, std in [0.1, 1]) or 'code' (8x8)."""

    def __init__(self, inp, act_dim, kind, cfg, factor_mean=False):
        super().__init__()
        self.kind, self.act_dim, self.factor_mean = kind, act_dim, factor_mean
        self.net = mlp(inp, cfg["head_units"], cfg["head_layers"], out=act_dim * (2 if kind == "continuous" else 1))
        dreamer_init(self)

    def dist(self, x):
        out = self.net(x).float()
        if self.kind == "continuous":
            mean, std = out.chunk(2, -1)
            return ("continuous", torch.tanh(mean), 0.9 * torch.sigmoid(std + 2.0) + 0.1)
        if self.kind == "code":
            return ("code", unimix_probs(out.reshape(*out.shape[:-1], CODE_FACTORS, CODE_CLASSES)))
        return ("discrete", unimix_probs(out))

    def sample(self, dist, greedy=False):
        """Continuous: the raw Gaussian sample, not clipped. REINFORCE needs the log-density of the point that was
        sampled; the density of a clipped sample (at +-1) is not that, and biases the gradient. `executed` clips it
        for the env and the world model."""
        if dist[0] == "continuous":
            return dist[1] if greedy else dist[1] + dist[2] * torch.randn_like(dist[1])
        a = onehot_straight_through(dist[1], not greedy).detach()
        return a.flatten(-2) if dist[0] == "code" else a

    def executed(self, a):
        """The action the env (and the world model) receives: continuous actions clipped to [-1, 1]."""
        return a.clamp(-1, 1) if self.kind == "continuous" else a

    def log_prob(self, dist, a):
        if dist[0] == "continuous":
            return torch.distributions.Normal(dist[1], dist[2], validate_args=False).log_prob(a).sum(-1)
        if dist[0] == "code":  # sum over the 8 factors = log-prob of the joint code (mean with --factor-logprob-mean)
            lp = (a.reshape(dist[1].shape) * dist[1].log()).sum(-1)
            return lp.mean(-1) if self.factor_mean else lp.sum(-1)
        return (a * dist[1].log()).sum(-1)

    def entropy(self, dist):
        if dist[0] == "continuous":
            return torch.distributions.Normal(dist[1], dist[2], validate_args=False).entropy().sum(-1)
        ent = categorical_entropy(dist[1])
        if dist[0] == "code":
            return ent.mean(-1) if self.factor_mean else ent.sum(-1)
        return ent


class ReturnNorm(nn.Module):
    """EMA (decay 0.99) of the 5th and 95th return percentiles, from zero without bias correction (the original's
    RewardEMA, as DreamerV3): low <- 0.99 low + 0.01 p5(R), high likewise with p95; scale = max(1, high - low)."""

    def __init__(self, decay=0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("q", torch.tensor([0.05, 0.95]), persistent=False)  # on the device once: no copy per update

    def update(self, ret):
        flat = ret.detach().float().flatten()
        if WORLD > 1:  # data parallel: the percentiles of the global batch, so every process keeps the same low and high
            parts = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(parts, flat)
            flat = torch.cat(parts)
        if flat.numel() > 16384:  # quantile limit; a strided subsample keeps it cheap
            flat = flat[:: math.ceil(flat.numel() / 16384)]
        q = torch.quantile(flat, self.q)
        self.low.copy_(self.decay * self.low + (1 - self.decay) * q[0])
        self.high.copy_(self.decay * self.high + (1 - self.decay) * q[1])
        return self.scale()

    def scale(self):
        return torch.clamp(self.high - self.low, min=1.0)


def lambda_return(reward, cont, value, lmbda):
    """R_k = r_k + c_k ((1 - lambda) v_{k+1} + lambda R_{k+1}),  R_K = v_K.   reward, cont (K, N); value (K+1, N).

    `cont` already holds gamma * continue-probability. The caller chooses the indexing (DreamerV3: r, c of s_{k+1}).
    """
    out, last = [], value[-1]
    for k in reversed(range(reward.shape[0])):
        last = reward[k] + cont[k] * ((1 - lmbda) * value[k + 1] + lmbda * last)
        out.append(last)
    return torch.stack(out[::-1])  # (K, N)


def imagination_weight(disc, gamma, original_indexing=False):
    """Loss weight of imagined step k = (discounted) probability that s_k is reached and not terminal.  disc (K+1, N) =
    gamma * c(s_k) for k = 0..K, where c(s_0) is the start state's own continue probability. Returns (K, N).

    DreamerV3 (default):  w_k = prod_{j<=k} disc_j / gamma = gamma^k prod_{j<=k} c_j   (a terminal start weighs 0)
    original (NM512):     w_k = prod_{j<k} disc_j                                      (w_0 = 1 for every start)
    """
    if original_indexing:
        return torch.cumprod(torch.cat([torch.ones_like(disc[:1]), disc[:-2]]), 0)
    return torch.cumprod(disc[:-1], 0) / gamma


# ======================================================================================================================
# 6. Subgoals: the autoencoder, max-cosine subgoal reward, novelty reward (hieros/models.py, hieros/hieros.py)
# ======================================================================================================================


class SubgoalAutoencoder(nn.Module):
    """symlog(h) -> 3 x [Linear(64), LN, GELU] -> 8x8 logits -> one-hot mode (straight-through) -> decoder -> g^."""

    def __init__(self, deter):
        super().__init__()
        code = CODE_FACTORS * CODE_CLASSES
        self.enc = mlp(deter, code, 3, act=nn.GELU)  # the third layer's output is the 64 logits (as the original)
        self.dec = mlp(code, deter, 3, out=deter, act=nn.GELU)  # plain Linear output (the original ends in LN+GELU)
        dreamer_init(self)

    def encode(self, h):  # (..., D) -> code (..., 64) exactly one-hot per factor, probs (..., 8, 8)
        probs = unimix_probs(self.enc(symlog(h)).reshape(*h.shape[:-1], CODE_FACTORS, CODE_CLASSES))
        return onehot_straight_through(probs, sample=False).flatten(-2), probs

    def decode(self, code):  # (..., 64) -> g^ (..., D), an estimate of symlog(h)
        return self.dec(code).float()

    def loss(self, h, kl_scale=0.5):  # mean (g^ - symlog h)^2 + kl_scale mean_factors KL(Cat || Uniform(8))
        code, probs = self.encode(h)
        rec = ((self.decode(code) - symlog(h)) ** 2).mean()
        kl = (probs * (probs.log() + math.log(CODE_CLASSES))).sum(-1).mean()
        return rec + kl_scale * kl, code


def max_cosine(g, s):
    """Director's max-cosine similarity:  max(0, g.s / max(|g|, |s|)^2)  in [0, 1] (1 only when g = s)."""
    norm = torch.maximum(g.norm(dim=-1), s.norm(dim=-1)).clamp(min=1e-8)
    return (g * s).sum(-1).div(norm**2).clamp(min=0.0)


def subgoal_reward(goal, h):
    """r_goal = symlog(max_cosine(g^, symlog(h))), in [0, ln 2]."""
    return symlog(max_cosine(goal, symlog(h)))


def novelty_reward(ae, h):
    """r_nov = symlog(mean_j (symlog(h)_j - Dec(Enc(h))_j)^2): large where the autoencoder has not seen h yet."""
    code, _ = ae.encode(h)
    return symlog(((symlog(h) - ae.decode(code)) ** 2).mean(-1))


# ======================================================================================================================
# 7. One level of the hierarchy, the agent, and the acting loop (Snagnar/Hieros:hieros/hieros.py Hieros, SubActor)
# ======================================================================================================================


class Level(nn.Module):
    """A full sub-actor: S5WM, actor, one critic (+ slow copy, + return scale) per reward head, subgoal autoencoder.

    Level 0 sees env observations and emits env actions; level L >= 1 sees the last 4 latents of level L - 1
    ([z; symlog(h)], 4 x (S*C + D)) through MLPs and emits an 8x8 subgoal code that level L - 1 is conditioned on.
    """

    def __init__(self, index, num_levels, obs_shape, image, act_kind, act_dim, cfg, args):
        super().__init__()
        self.index, self.act_dim, self.act_kind = index, act_dim, act_kind
        self.has_goal = index < num_levels - 1  # every level but the top receives a subgoal
        self.heads = ["extrinsic"] + (["subgoal"] if self.has_goal else [])
        if index >= 1 or not args.novelty_only_higher_level:
            self.heads.append("novelty")
        self.weights = {
            "extrinsic": args.extrinsic_reward_weight,
            "subgoal": args.subgoal_reward_weight,
            "novelty": args.novelty_reward_weight,
        }
        self.wm = S5WM(obs_shape, image, act_dim, cfg, args, cfg["mlp_units"])
        feat = cfg["stoch"] * cfg["classes"] + cfg["deter"]
        self.ac_dim = feat + 3 + (CODE_FACTORS * CODE_CLASSES if self.has_goal else 0)  # [z, h, r, c, H] (+ code)
        self.actor = Actor(self.ac_dim, act_dim, act_kind, cfg, args.factor_logprob_mean)
        # Output init: a deviation from the original, which keeps the full-scale init of its actor output layer
        # (Snagnar/Hieros:hieros/models.py@ab4c593, ImagBehavior: ActionHead(..., outscale=1.0)). DreamerV3 multiplies
        # its policy output weights by 0.01 (danijar/dreamerv3:dreamerv3/configs.yaml@e3f0224, policy outscale), so the
        # logits start near 0: a near-uniform first policy over actions and over each 8-way factor of the subgoal code,
        # and for continuous actions mean tanh(0) = 0 and std 0.9 sigmoid(2) + 0.1 = 0.89. With scale 1 the first policy
        # is nearly deterministic, and where only random exploration finds the first reward nothing is learned (on
        # CartPole its first episodes end after ~10 steps, below a uniform policy's ~22). --actor-init-scale 1 restores it.
        with torch.no_grad():
            self.actor.net[-1].weight.mul_(args.actor_init_scale)  # the bias starts at 0 (dreamer_init)
        critic = lambda: mlp(self.ac_dim, cfg["head_units"], cfg["head_layers"], out=REWARD_BINS)
        self.critics = nn.ModuleDict({k: critic() for k in self.heads})
        for c in self.critics.values():
            dreamer_init(c)
            zero_last(c)
        self.slow_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.retnorms = nn.ModuleDict({k: ReturnNorm() for k in self.heads})
        self.ae = SubgoalAutoencoder(cfg["deter"]) if (self.has_goal or "novelty" in self.heads) else None
        self.updates = 0  # updates of this level so far (a python int, saved through get_extra_state)

    def get_extra_state(self):
        return {"updates": self.updates}

    def set_extra_state(self, state):
        self.updates = int(state["updates"])

    def ac_input(self, state, logits, code):
        """Actor/critic input: [z, h, symlog(r^), symlog(c^), symlog(H[q or p])] (+ the 64-d code)."""
        feat = S5WM.feat(state)
        r = TwoHot(self.wm.reward(feat)).mean()  # (N,)
        c = torch.sigmoid(self.wm.cont(feat).float()).squeeze(-1)  # (N,)
        ent = categorical_entropy(unimix_probs(logits)).sum(-1)  # (N,)
        parts = [feat.float(), symlog(r)[..., None], symlog(c)[..., None], symlog(ent)[..., None]]
        if self.has_goal:
            parts.append(code)
        return torch.cat(parts, -1), r, c


def action_spec(space):
    if isinstance(space, gym.spaces.Discrete):
        return "discrete", int(space.n)
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return "continuous", int(space.shape[0])
    raise UsageError(f"unsupported action space {space}: use Discrete or a 1-D Box")


def check_obs_space(space):
    """Raise a one-line UsageError for an observation space the networks cannot take; returns whether it holds images."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) not in (1, 3):  # the type first: a Tuple has no shape
        raise UsageError(f"unsupported observation space {space}: use a Box of images (H, W, C) or flat vectors")
    image = len(space.shape) == 3
    sides = space.shape[:2]
    if image and (min(sides) < IMAGE_STRIDE or sides[0] % IMAGE_STRIDE or sides[1] % IMAGE_STRIDE):
        raise UsageError(
            f"image observations need sides divisible by {IMAGE_STRIDE} (the CNN halves them 4 times), got {space.shape}"
        )
    if image and space.dtype != np.uint8 and not (space.low.min() >= 0 and space.high.max() <= 255):
        # float images in [0, 1] arrive here as uint8 (common.make_env converts them); [0, 255] is used as it is
        raise UsageError(f"float image observations must lie in [0, 1] or [0, 255], got {space}")
    return image


class Agent(nn.Module):
    def __init__(self, obs_space, act_space, args):
        super().__init__()
        cfg = SIZES[args.model_size]
        kind, a_dim = action_spec(act_space)
        image = check_obs_space(obs_space)
        latent = cfg["stoch"] * cfg["classes"] + cfg["deter"]
        up_obs = (args.subactor_encode_intermediate * latent,)  # (4 (S*C + D),)
        code = CODE_FACTORS * CODE_CLASSES
        levels = [Level(0, args.max_hierarchy, tuple(obs_space.shape), image, kind, a_dim, cfg, args)]
        levels += [Level(i, args.max_hierarchy, up_obs, False, "code", code, cfg, args) for i in range(1, args.max_hierarchy)]
        self.levels = nn.ModuleList(levels)


def level_acts(t, level, every):
    """Level L acts (and filters a new observation) at env steps t = 0 (mod every^L); `HierarchyRunner` counts t per env
    from the episode start and also lets every level act at an episode's last step."""
    return t % (every**level) == 0


def level_trains(call, level, every):
    """Level L trains on train calls = 0 (mod every^L)."""
    return call % (every**level) == 0


class HierarchyRunner:
    """Per-env acting state of all levels. Filtering runs bottom-up (level L sees level L-1's *fresh* latent), then the
    decisions run top-down (level L is conditioned on the code level L+1 just emitted or still holds).

    Level L's replay record at a decision step holds its observation, its new action, the env reward since its last
    decision divided by the full period (sum r / every^L, also for a shorter window at an episode end), is_first if
    an episode started in that window, and the goal (decoded with level L's own autoencoder) and the code it was
    conditioned on.

    Per-env clocks and episode ends (a deviation from the original's Hieros.policy, where one global clock t decides for
    all envs, so that level L >= 1 saw an env's episode end only when it fell on one of its decision steps, 1 in
    every^L ends, and lost the reward after its last decision): each env has its own clock, restarted at its episode
    start, and the last step of an episode is a decision step of every level, so the level's last record of the episode
    carries the tail reward and is_terminal. Levels >= 1 therefore decide per env; a record carries `env_mask`, the
    envs it is for, and each replay writes those envs only. A level's per-step work runs on all envs whenever one of
    them decides (the others' results are discarded), which keeps the batch shapes fixed.
    """

    def __init__(self, agent, num_envs, args, device, greedy=False):
        self.levels, self.n, self.device, self.greedy = agent.levels, num_envs, device, greedy
        self.every, self.fifo_len = args.subactor_update_every, args.subactor_encode_intermediate
        self.periods = torch.tensor([float(self.every**i) for i in range(len(self.levels))], device=device)
        self.reset()

    def reset(self):
        n, dev = self.n, self.device
        self.t = np.zeros(n, np.int64)  # per-env clock: env steps since the episode started (host side, no syncs)
        self.latent = [lv.wm.initial(n) for lv in self.levels]
        self.logits = [torch.zeros(n, lv.wm.S, lv.wm.C, device=dev) for lv in self.levels]
        self.last_action = [torch.zeros(n, lv.act_dim, device=dev) for lv in self.levels]
        self.fifo = [None] + [torch.zeros(n, self.fifo_len, lv.wm.Z + lv.wm.D, device=dev) for lv in self.levels[:-1]]
        self.reward_acc = torch.zeros(len(self.levels), n, device=dev)
        self.first_pending = torch.ones(len(self.levels), n, dtype=torch.bool, device=dev)
        # usage statistics between two log lines, capped (no log line comes before the first update)
        self.emitted = [collections.deque(maxlen=4096) for _ in self.levels]  # codes emitted by levels >= 1
        self.achieved = [collections.deque(maxlen=4096) for _ in self.levels]  # subgoal reward achieved at decisions

    @torch.no_grad()
    def step(self, obs, reward, is_first, is_terminal, first=None, last=None):
        """obs (n, ...) tensor of the current observation, reward/is_first/is_terminal (n,) tensors that came with it;
        first / last: the same step's is_first / is_last as numpy bool arrays (n,) for the per-env clocks (None: no
        episode starts / ends here). Returns the level-0 action (n, A) and a list with a replay record (dict of
        tensors, plus `env_mask`, numpy (n,)) per level that decided for at least one env."""
        nl = len(self.levels)
        if first is not None:
            self.t[first] = 0  # an episode start restarts the env's clock: every level decides at its first step
        ends = np.zeros(self.n, bool) if last is None else np.asarray(last, bool)
        decide = [level_acts(self.t, i, self.every) | ends for i in range(nl)]  # (n,) per level; L decides => L-1 does
        active = [i for i in range(nl) if decide[i].any()]  # a prefix 0..k (the periods nest)
        # host-to-device copies before any kernel of this step is queued (a pageable copy waits for the stream)
        masks = {i: torch.as_tensor(decide[i], device=self.device) for i in active}
        rows = {i: torch.as_tensor(np.flatnonzero(decide[i]), device=self.device) for i in active}  # the deciding envs
        # an episode start drops what the last episode left unreported and the held subgoal codes (as the original:
        # masked until the level above decides again; level 0's previous action is masked in obs_step as well)
        self.reward_acc = torch.where(is_first[None], torch.zeros_like(self.reward_acc), self.reward_acc)
        self.last_action = [torch.where(is_first[:, None], torch.zeros_like(a), a) for a in self.last_action]
        self.reward_acc += reward.float()[None] / self.periods[:, None]  # level-L reward = mean r over its window
        self.first_pending |= is_first[None]
        for i in range(1, nl):  # an episode start empties the FIFOs of the upper levels
            self.fifo[i] = torch.where(is_first[:, None, None], torch.zeros_like(self.fifo[i]), self.fifo[i])
        inputs = [None] * nl
        for i in active:  # bottom-up filtering; the new state is kept only for the envs where level i decides
            lv, m = self.levels[i], masks[i]
            inputs[i] = obs if i == 0 else self.fifo[i].flatten(1)  # (n, ...) or (n, 4 (S*C + D))
            embed = lv.wm.encoder(inputs[i])
            latent, logits, _ = lv.wm.obs_step(self.latent[i], self.last_action[i], embed, self.first_pending[i])
            keep = lambda new, old: torch.where(m.view(-1, *[1] * (new.dim() - 1)), new, old)  # noqa: B023
            self.latent[i] = {k: keep(v, self.latent[i][k]) for k, v in latent.items()}
            self.logits[i] = keep(logits, self.logits[i])
            if i + 1 < nl:  # hand the fresh latent [z; symlog(h)] up into level i+1's FIFO (symlog_subactor_obs)
                lat = torch.cat([self.latent[i]["z"], symlog(self.latent[i]["h"])], -1).float()[:, None]
                self.fifo[i + 1] = keep(torch.cat([self.fifo[i + 1][:, 1:], lat], 1), self.fifo[i + 1])
        records = [None] * nl
        for i in reversed(active):  # top-down decisions
            lv, m = self.levels[i], masks[i]
            code = (
                self.last_action[i + 1]
                if lv.has_goal
                else torch.zeros(self.n, CODE_FACTORS * CODE_CLASSES, device=self.device)
            )
            goal = lv.ae.decode(code) if lv.has_goal else torch.zeros(self.n, lv.wm.D, device=self.device)
            x, _, _ = lv.ac_input(self.latent[i], self.logits[i], code)
            action = lv.actor.executed(lv.actor.sample(lv.actor.dist(x), self.greedy))  # stored and executed
            records[i] = dict(
                obs=inputs[i],
                action=action,
                reward=self.reward_acc[i].clone(),
                is_first=self.first_pending[i].clone(),
                is_terminal=is_terminal.clone(),
                subgoal=goal,
                code=code,
                env_mask=decide[i],
            )
            if lv.has_goal:
                self.achieved[i].append(subgoal_reward(goal, self.latent[i]["h"]).index_select(0, rows[i]).mean())
            if i >= 1:
                self.emitted[i].append(action.index_select(0, rows[i]))
            self.last_action[i] = torch.where(m[:, None], action, self.last_action[i])
            self.reward_acc[i] = torch.where(m, torch.zeros_like(self.reward_acc[i]), self.reward_acc[i])
            self.first_pending[i] &= ~m
        self.t += 1
        return self.last_action[0], records


def env_action(action, space):
    """Level-0 actor output -> env action (index for Discrete; for Box rescaled from [-1, 1] to finite bounds)."""
    if isinstance(space, gym.spaces.Discrete):
        return action.argmax(-1).cpu().numpy() + int(space.start)  # Discrete(n, start) counts from start
    a = action.cpu().numpy()
    if np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        a = space.low + (a + 1) / 2 * (space.high - space.low)
    return a.astype(space.dtype)


# ======================================================================================================================
# 8. Replay: sequences with stride 1, ETBS or uniform (Snagnar/Hieros:embodied/replay/selectors.py)
# ======================================================================================================================


def etbs_cdf(x, n_keys):
    """F(x) = int_2^x ln(n/y) dy / Z on [2, n], n = N + 2,  Z = n - 2 - 2 ln(n/2)  (closed form)."""
    n = n_keys + 2.0
    z = n - 2.0 - 2.0 * np.log(n / 2.0)
    return (x * (1.0 + np.log(n / x)) - 2.0 * (1.0 + np.log(n / 2.0))) / z


def etbs_index(u, n_keys, m, tau):
    """ETBS: x = 2 + u (n - 2), e = min(M F(x), N - 1), index = floor(tau e + (1 - tau)(x - 2)).

    tau = 0 is uniform; tau = 1 is pure ETBS, which down-weights old keys (uniform sampling over-samples them by
    ~ln(N / i)). `m` is the scale M: the current N (fixed) or the capacity (the original's wiring).
    """
    x = 2.0 + np.asarray(u, np.float64) * n_keys
    e = np.minimum(m * etbs_cdf(x, n_keys), n_keys - 1)
    return np.clip(np.floor(tau * e + (1.0 - tau) * (x - 2.0)).astype(np.int64), 0, n_keys - 1)


def etbs_pmf(n_keys, m, tau, iters=100):
    """Exact pmf of etbs_index: g(x) is non-decreasing, so P(i) = (g^-1(i+1) - g^-1(i)) / N (bisection)."""
    n = n_keys + 2.0
    g = lambda x: tau * np.minimum(m * etbs_cdf(x, n_keys), n_keys - 1) + (1.0 - tau) * (x - 2.0)
    v = np.arange(n_keys + 1, dtype=np.float64)
    lo, hi = np.full_like(v, 2.0), np.full_like(v, n)
    for _ in range(iters):  # smallest x with g(x) >= v
        mid = (lo + hi) / 2
        ok = g(mid) >= v
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    hi[0], hi[-1] = 2.0, n  # g^-1(0) = 2, g^-1(N) := n
    return np.diff(hi) / n_keys


class SequenceReplay:
    """Per-env ring buffers of `cap` steps; key = (env, start), the T-step sequence starting there.

    A record is written for all envs, or only for those in its `env_mask` (levels >= 1 record at each env's own
    decision steps). Keys are kept in a ring in the order they became complete, which is the "age" ETBS reasons about;
    with lockstep writes key k is (env k % E, start k // E), as in the original. Each write of env e overwrites the
    first step of its oldest key (once the env has wrapped), which makes that key stale; stale keys at the old end of
    the ring are dropped at once, stale keys behind the oldest key of a slower env are counted (`n_stale`) and skipped
    when sampling. Images are stored as uint8.

    `capacity` (steps summed over envs) is the ETBS scale M of --etbs-max-len capacity; `allocate` (default: capacity)
    caps the steps the ring buffers hold, so a run shorter than the capacity allocates only what it can write.
    """

    def __init__(self, capacity, num_envs, length, spec, args, seed, allocate=None):
        self.E, self.T = num_envs, length
        self.cap = max(min(capacity, allocate or capacity) // num_envs, length + 1)  # steps per env
        self.capacity = capacity
        self.data = {k: np.zeros((num_envs, self.cap, *shape), dtype) for k, (shape, dtype) in spec.items()}
        self.count = np.zeros(num_envs, np.int64)  # steps written per env
        self.key_env = np.zeros(num_envs * self.cap, np.int64)  # ring of complete keys, oldest at key_head
        self.key_start = np.zeros(num_envs * self.cap, np.int64)
        self.key_head, self.key_n, self.n_stale, self._valid_cache = 0, 0, 0, None
        self.sampler, self.tau, self.max_len = args.replay, args.replay_temperature, args.etbs_max_len
        self.rng = np.random.default_rng(seed)

    def __len__(self):  # number of valid keys N
        return self.key_n - self.n_stale

    def steps(self):  # steps held, summed over envs
        return int(np.minimum(self.count, self.cap).sum())

    def _valid(self):
        """Ring positions of the valid keys, oldest first: O(N), cached until the next write."""
        if self._valid_cache is None:
            ring = (self.key_head + np.arange(self.key_n)) % len(self.key_env)
            self._valid_cache = ring[self.key_start[ring] >= self.count[self.key_env[ring]] - self.cap]
        return self._valid_cache

    def _set_keys(self, env, start):  # replace the ring by these keys (oldest first), all valid
        self.key_env[: len(env)], self.key_start[: len(env)] = env, start
        self.key_head, self.key_n, self.n_stale, self._valid_cache = 0, len(env), 0, None

    def add(self, record):
        mask = record.get("env_mask")
        envs = np.arange(self.E) if mask is None else np.flatnonzero(mask)
        pos = self.count[envs] % self.cap
        for k, v in record.items():
            if k != "env_mask":
                v = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
                self.data[k][envs, pos] = v[envs]
        self.count[envs] += 1
        self._valid_cache = None  # (the compaction below is the only reader before the ring changes again)
        self.n_stale += int(np.sum(self.count[envs] > self.cap))  # each such write overwrote a key's first step
        if self.key_n + len(envs) > len(self.key_env):  # ring full of stale keys (uneven envs): keep the valid ones
            keep = self._valid()
            self._set_keys(self.key_env[keep], self.key_start[keep])
        for e in envs:  # the keys that end at the step just written
            if self.count[e] >= self.T:
                i = (self.key_head + self.key_n) % len(self.key_env)
                self.key_env[i], self.key_start[i] = e, self.count[e] - self.T
                self.key_n += 1
        while self.key_n and self.key_start[self.key_head] < self.count[self.key_env[self.key_head]] - self.cap:
            self.key_head, self.key_n, self.n_stale = (self.key_head + 1) % len(self.key_env), self.key_n - 1, self.n_stale - 1

    def sample(self, batch_size):
        n = len(self)
        u = self.rng.random(batch_size)
        if self.sampler == "etbs":
            idx = etbs_index(u, n, n if self.max_len == "current" else self.capacity, self.tau)
        else:
            idx = np.minimum((u * n).astype(np.int64), n - 1)
        # the idx-th oldest valid key: direct when no stale key sits inside the ring, else through the valid list
        ring = (self.key_head + idx) % len(self.key_env) if self.n_stale == 0 else self._valid()[idx]
        env, start = self.key_env[ring], self.key_start[ring]
        steps = (start[:, None] + np.arange(self.T)) % self.cap  # (B, T)
        batch = {k: v[env[:, None], steps] for k, v in self.data.items()}
        batch["episode_first"] = batch["is_first"].copy()  # the env's episode starts (--no-reward-loss-at-first)
        batch["is_first"][:, 0] = True  # every sampled sequence starts fresh (x_0 = 0)
        return batch

    def state_dict(self):
        filled = int(min(self.count.max(), self.cap))
        ring = self._valid()
        return {
            "count": self.count.copy(),
            "keys": np.stack([self.key_env[ring], self.key_start[ring]]),
            "rng": self.rng.bit_generator.state,
            "data": {k: v[:, :filled].copy() for k, v in self.data.items()},
        }

    def load_state_dict(self, state):
        self.count = np.asarray(state["count"], np.int64).copy()  # (E,)
        self.rng.bit_generator.state = state["rng"]
        for k, v in state["data"].items():
            self.data[k][:, : v.shape[1]] = v
        self._set_keys(*np.asarray(state["keys"], np.int64))


def replay_spec(level, obs_space):
    """{name: (shape of one step, dtype)} of a level's replay; uint8 images stay uint8, everything else is float32."""
    image = level.index == 0 and len(obs_space.shape) == 3 and obs_space.dtype == np.uint8
    obs_shape = tuple(obs_space.shape) if level.index == 0 else (level.wm.encoder.net[0].in_features,)
    return {
        "obs": (obs_shape, np.uint8 if image else np.float32),
        "action": ((level.act_dim,), np.float32),
        "reward": ((), np.float32),
        "is_first": ((), bool),
        "is_terminal": ((), bool),
        "subgoal": ((level.wm.D,), np.float32),
        "code": ((CODE_FACTORS * CODE_CLASSES,), np.float32),
    }


def make_replays(agent, obs_space, args, seed):
    """One SequenceReplay per level, allocating no more than the run can write (replay_capacity); refuses one that does
    not fit in this machine's RAM before anything is allocated."""
    specs = [replay_spec(lv, obs_space) for lv in agent.levels]
    steps = max(replay_capacity(args) // args.num_envs, args.batch_length + 1) * args.num_envs  # SequenceReplay.cap * E
    check_memory(steps, sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for sp in specs for shape, dtype in sp.values()))
    allocate = replay_capacity(args)
    return [
        SequenceReplay(args.buffer_size, args.num_envs, args.batch_length, spec, args, seed + 1000 * i, allocate)
        for i, spec in enumerate(specs)
    ]


def check_memory(steps: int, step_bytes: int):
    """Refuse replay buffers that cannot fit in this machine's RAM (a one-line error instead of a crash mid-run). Each
    level's buffer is counted in full: at worst (an episode end at every step) every level writes every step."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # data parallel: every process on this host holds its own
    need = steps * step_bytes * local
    if need > 0.9 * ram:
        fits = int(0.5 * ram / step_bytes / local)
        on_host = f" of the {local} processes on this host ({steps:,} steps each" if local > 1 else f" ({steps:,} steps"
        raise UsageError(
            f"the replay buffers{on_host} of {step_bytes:,} bytes over all levels) need {need / 2**30:.1f} GiB, more "
            f"than this machine's {ram / 2**30:.1f} GiB of RAM: pass --buffer-size {fits // 1000 * 1000 or fits} or less"
        )


# ======================================================================================================================
# 9. Training one level: world model, imagination, actor-critic per reward head, subgoal autoencoder (SubActor._train);
#    data parallel under torchrun: gradients averaged over the processes, decisions agreed
# ======================================================================================================================


def make_optimizers(level, args):
    adam = lambda params, lr, eps: torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=args.weight_decay)
    opts = {
        "wm": adam(level.wm.parameters(), args.model_lr, 1e-8),
        "actor": adam(level.actor.parameters(), args.actor_lr, 1e-5),
        "critic": adam(level.critics.parameters(), args.critic_lr, 1e-5),
    }
    if level.ae is not None:
        opts["ae"] = adam(level.ae.parameters(), args.subgoal_lr, 1e-6)
    warmup = max(1, args.model_warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opts["wm"], lambda u: min(1.0, (u + 1) / warmup))
    return opts, sched


def wm_loss(wm, obs, action, reward, is_first, is_terminal, args, episode_first=None):
    """L = recon + reward (two-hot) + continue (Bernoulli) + KL (dyn 0.5 / rep 0.1, free bits), averaged over (B, T).
    is_first resets the S5 (also at step 0 of every sampled window); episode_first (default: is_first) marks the env's
    episode starts, whose reward --no-reward-loss-at-first masks."""
    state, post_logits, prior_logits = wm.observe(wm.encoder(obs), action, is_first)
    feat = S5WM.feat(state)  # (B, T, S*C + D)
    recon = wm.decoder.loss(feat, obs)  # (B, T)
    rew = -TwoHot(wm.reward(feat)).log_prob(reward)  # (B, T)
    if not args.reward_loss_at_first:  # not the forced reset at step 0 of a window: its reward is a real one
        rew = rew * (1.0 - (is_first if episode_first is None else episode_first).float())
    cont = F.binary_cross_entropy_with_logits(wm.cont(feat).squeeze(-1).float(), 1.0 - is_terminal, reduction="none")
    kl, dyn, rep = kl_loss(post_logits, prior_logits, args.free_nats, args.kl_dyn_scale, args.kl_rep_scale)
    loss = (recon + rew + cont + kl).mean()
    parts = {"wm_recon": recon, "wm_reward": rew, "wm_cont": cont, "wm_kl_dyn": dyn, "wm_kl_rep": rep}
    return loss, state, post_logits, {**{k: v.mean() for k, v in parts.items()}, "wm_loss": loss}


@torch.no_grad()
def imagine(level, start, logits, code, horizon):
    """Roll the prior K steps from every start state with a_k ~ pi(s_k, code); the code stays fixed (as the original).
    Returns actor inputs (K+1, N, F), deters (K+1, N, D), actions (K, N, A), reward and continue means (K+1, N).

    The world model imagines (and predicts the imagined rewards) in eval mode, i.e. without dropout: the trajectory is
    a function of the start states and the sampling noise of z and a alone (as in the original and as in acting)."""
    state, xs, hs, acts, rews, conts = start, [], [], [], [], []
    with frozen_ssms(level.wm), eval_mode(level.wm):
        traj = _imagine_loop(level, state, logits, code, horizon, xs, hs, acts, rews, conts)
    return traj


def _imagine_loop(level, state, logits, code, horizon, xs, hs, acts, rews, conts):
    for k in range(horizon + 1):
        x, r, c = level.ac_input(state, logits, code)
        xs.append(x), hs.append(state["h"].float()), rews.append(r), conts.append(c)
        if k == horizon:
            break
        a = level.actor.sample(level.actor.dist(x))
        acts.append(a)  # the raw sample: the actor's log-prob is taken at it
        state, logits = level.wm.img_step(state, level.actor.executed(a))  # the model sees what the env would get
    return torch.stack(xs), torch.stack(hs), torch.stack(acts), torch.stack(rews), torch.stack(conts)


def behavior_losses(level, xs, acts, rewards, cont, args, autocast, metrics):
    """Critic loss (summed over the reward heads) and actor loss of one level on an imagined trajectory, DreamerV3's
    with one critic per reward head (the original's ImagBehavior): xs (K+1, N, F) actor/critic inputs, acts (K, N, A)
    the sampled actions, rewards {head: (K+1, N)} and cont (K+1, N) of the states s_0..s_K. Writes its diagnostics
    (the entropy and the mixed advantage among them) into `metrics`."""
    disc = args.gamma * cont  # (K+1, N)
    # DreamerV3 indexing: the step s_k -> s_{k+1} earns r(s_{k+1}) and continues with c(s_{k+1}); the original: s_k
    sl = slice(None, -1) if args.original_return_indexing else slice(1, None)
    weight = imagination_weight(disc, args.gamma, args.original_return_indexing).detach()  # (K, N)
    # --- critics (one per head) and advantages ---
    adv_mix, critic_loss = 0.0, 0.0
    with autocast():
        for head in level.heads:
            logits = level.critics[head](xs).float()  # (K+1, N, 255)
            value = TwoHot(logits).mean().detach()
            ret = lambda_return(rewards[head][sl], disc[sl], value, args.lmbda)  # (K, N)
            scale = level.retnorms[head].update(ret)
            adv = (ret - value[:-1]) / (1.0 if args.raw_advantage else scale)
            adv_mix = adv_mix + level.weights[head] * adv
            slow = TwoHot(level.slow_critics[head](xs[:-1]).float()).mean().detach()
            dist = TwoHot(logits[:-1])
            head_loss = -(weight * (dist.log_prob(ret.detach()) + dist.log_prob(slow))).mean()
            critic_loss = critic_loss + head_loss
            metrics[f"critic_{head}"] = head_loss.detach()
            metrics[f"imag_{head[:3] if head == 'extrinsic' else head}_reward"] = rewards[head][sl].mean()  # the ones used
            metrics[f"return_scale_{head}"] = scale
            metrics[f"value_{head}"] = value.mean()
        adv_mix = adv_mix / sum(level.weights[h] for h in level.heads)
        # --- actor: REINFORCE with the mixed advantage and an entropy bonus ---
        dist = level.actor.dist(xs[:-1])
        logp, ent = level.actor.log_prob(dist, acts), level.actor.entropy(dist)
        actor_loss = -(weight * (logp * adv_mix.detach() + args.entropy_coef * ent)).mean()
    metrics.update(entropy=ent.mean().detach(), advantage=adv_mix.mean().detach())
    return actor_loss, critic_loss


def train_level(level, opts, sched, batch, args, loss_fn, autocast):
    """One update of one level from a replay batch (dict of (B, T, ...) tensors). Returns metrics as tensors."""
    b, t = batch["reward"].shape
    metrics = {}
    # --- world model (parallel over time) ---
    inputs = [batch[k] for k in ("obs", "action", "reward", "is_first")] + [batch["is_terminal"].float(), args]
    with autocast():
        loss, state, post_logits, m = loss_fn(level.wm, *inputs, batch.get("episode_first"))
    metrics.update(m)
    opts["wm"].zero_grad(set_to_none=True)
    loss.backward()
    average_grads(level.wm.parameters())  # data parallel (else a no-op): before clipping, so the global norm is clipped
    metrics["grad_norm"] = nn.utils.clip_grad_norm_(level.wm.parameters(), 1000.0)  # logged as opt/grad_norm_L{level}
    opts["wm"].step()
    sched.step()
    level.updates += 1
    if level.updates * args.subactor_train_every**level.index <= args.behavior_starts:  # world model only
        return metrics
    # --- imagination from all B*T posterior states, goal held at the start state's stored code ---
    start = {k: v.detach().flatten(0, 1) for k, v in state.items()}  # (B*T, ...)
    code, goal = batch["code"].flatten(0, 1), batch["subgoal"].flatten(0, 1)
    with autocast():
        xs, hs, acts, rew, cont = imagine(level, start, post_logits.detach().flatten(0, 1), code, args.imag_horizon)
    xs, hs, rew, cont = xs.float(), hs.float(), rew.float(), cont.float()
    rewards = {"extrinsic": rew}  # (K+1, N)
    if "subgoal" in level.heads:
        rewards["subgoal"] = subgoal_reward(goal[None], hs)
    if "novelty" in level.heads:
        with torch.no_grad():
            rewards["novelty"] = novelty_reward(level.ae, hs)
    actor_loss, critic_loss = behavior_losses(level, xs, acts, rewards, cont, args, autocast, metrics)
    opts["actor"].zero_grad(set_to_none=True)
    actor_loss.backward()
    average_grads(level.actor.parameters())
    nn.utils.clip_grad_norm_(level.actor.parameters(), 100.0)
    opts["actor"].step()
    opts["critic"].zero_grad(set_to_none=True)
    critic_loss.backward()
    average_grads(level.critics.parameters())
    for c in level.critics.values():
        nn.utils.clip_grad_norm_(c.parameters(), 100.0)
    opts["critic"].step()
    with torch.no_grad():  # slow critic: EMA with mix 0.02 every update
        for p_slow, p in zip(level.slow_critics.parameters(), level.critics.parameters(), strict=True):
            p_slow.lerp_(p, args.slow_critic_mix)
    metrics.update(actor=actor_loss.detach(), critic=critic_loss.detach())
    # --- subgoal autoencoder on the imagined deters (detached) ---
    if level.ae is not None:
        with autocast():
            ae_loss, ae_code = level.ae.loss(hs.flatten(0, 1), args.subgoal_kl_scale)
        opts["ae"].zero_grad(set_to_none=True)
        ae_loss.backward()
        average_grads(level.ae.parameters())
        nn.utils.clip_grad_norm_(level.ae.parameters(), 100.0)
        opts["ae"].step()
        metrics["ae"] = ae_loss.detach()
    return metrics


def to_batch(np_batch, device):
    """numpy batch -> tensors on `device`. On CUDA through pinned memory with non_blocking=True: a copy from ordinary
    (pageable) memory first waits for every queued kernel, i.e. for the previous update, a host sync per update."""
    if device.type != "cuda":
        return {k: torch.as_tensor(v, device=device) for k, v in np_batch.items()}
    pinned = {k: torch.from_numpy(np.ascontiguousarray(v)).pin_memory() for k, v in np_batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in pinned.items()}


def train_call(agent, optims, replays, call, args, loss_fn, autocast, metrics, nonfinite) -> list:
    """One train call of main()'s train-ratio schedule: level L trains on the calls = 0 (mod 4^L) once its replay holds a
    batch (the original's Hieros.train). metrics[L] receives level L's latest metrics (tensors: no host sync), nonfinite
    collects per loss term whether it was ever non-finite. Returns the levels that trained."""
    trained, device, batch_size = [], next(agent.parameters()).device, args.batch_size // WORLD  # this process's share
    ready = [level_trains(call, i, args.subactor_train_every) and len(r) >= batch_size for i, r in enumerate(replays)]
    if WORLD > 1:  # data parallel: a level trains only where every process's replay holds its batch (levels >= 1 record
        ready = all_ranks(ready, dist.ReduceOp.MIN)  # at episode ends too, so their replays fill unevenly): no hang
    for i, (lv, (opts, sched)) in enumerate(zip(agent.levels, optims, strict=True)):
        if not ready[i]:
            continue
        batch = to_batch(replays[i].sample(batch_size), device)
        metrics[i] = train_level(lv, opts, sched, batch, args, loss_fn, autocast)
        for k in ("wm_loss", "actor", "critic"):
            if k in metrics[i]:  # before --behavior-starts only the world model trains
                nonfinite[f"{k}_L{i}"] = nonfinite.get(f"{k}_L{i}", False) | ~torch.isfinite(metrics[i][k])
        trained.append(i)
    return trained


# ----------------------------------------------------------------------------------------------------------------------
# Data parallel (torchrun; vwxyzjn/cleanrl:cleanrl/ppo_atari_multigpu.py is the model): every process runs its own envs
# and replays and samples batch_size / WORLD sequences; before every optimizer step the gradients are averaged over the
# processes, so each step is the one of the global batch (every loss is a mean over its batch) and the parameters stay
# identical everywhere. An explicit all-reduce, not DistributedDataParallel: a level has 3-4 optimizers, each stepped
# after its own backward of its own sub-network, and the levels train on different calls; DDP wraps one module with one
# backward and would need find_unused_parameters for all that. Every collective sits on a path that all processes take
# at the same step: the decisions before them (which levels train, stop, non-finite, checkpoint) come from quantities
# that are equal everywhere (global_step, the train-call counter) or are themselves reduced over the processes.
# ----------------------------------------------------------------------------------------------------------------------


def dp_init(cuda: bool):
    """Join the process group torchrun prepared (rendezvous from MASTER_ADDR/MASTER_PORT): NCCL for the gradients on
    GPUs, gloo for CPU tensors (the small decisions of all_ranks, and everything on a CPU run). Ranks > 0 print nothing."""
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(LOCAL_RANK)
    if RANK > 0:  # stdout (progress, episodes) is rank 0's; errors still reach stderr from every process
        sys.stdout = open(os.devnull, "w")


def average_grads(params):
    """g <- (1 / WORLD) sum_ranks g for every parameter with a gradient, as one flat bucket (one all_reduce). A no-op in a
    single process. Which parameters have a gradient follows from the code path alone, so the buckets match."""
    if WORLD == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)  # sum (ReduceOp.AVG exists only on NCCL)
    flat /= WORLD
    for g, v in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(v.view_as(g))


def all_ranks(values: list, op) -> list:
    """Data parallel: a small list of ints or bools reduced over all processes (MIN: all of them; MAX: any of them)."""
    t = torch.tensor([int(v) for v in values], dtype=torch.int64)  # on the CPU: through gloo
    dist.all_reduce(t, op=op)
    return [type(v)(x) for v, x in zip(values, t.tolist(), strict=True)]


def broadcast_state(agent):
    """Rank 0's parameters and buffers to every process (after the init and after a resume): identical copies at start."""
    for v in agent.state_dict().values():
        if torch.is_tensor(v):
            dist.broadcast(v, src=0)


class NullWriter:
    """TensorBoard on ranks > 0: every call does nothing (rank 0 logs)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


# ======================================================================================================================
# 10. Checkpoints (the training state and its replays as one unit), stop signals and evaluation
# ======================================================================================================================

FORMAT = "cleanwm-hieros_s5_torch-2"  # cleanwm-<script>-<version>: a file of another script or version is refused by name
# Version 2 holds only what torch.load(weights_only=True) reads (tensors, dicts, lists, tuples, str, int, float, bool,
# None; no other class is allowed), so loading a file cannot run code from it; the replays go to a separate .npz. The
# files of version 1 (no "format" field) were full pickles, loaded with weights_only=False.


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


def pickle_strings(data: bytes) -> set:
    """The strings in a pickle, read with pickletools (which only parses it: nothing in the pickle runs)."""
    found = set()
    with contextlib.suppress(Exception):
        for _, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                found.add(arg)
    return found


def what_file(raw: bytes, fmt) -> str:
    """The end of the one-line error for a file that is not a FORMAT file: what it is, and what to do with it."""
    ours = os.path.basename(__file__)
    if isinstance(fmt, str) and fmt.startswith("cleanwm-"):
        script, _, version = fmt[len("cleanwm-") :].rpartition("-")
        if f"{script}.py" != ours:
            return f"was written by {script}.py, not {ours}: use it with {script}.py"
        return f"has the older format {fmt}, which this {ours} no longer reads (it reads {FORMAT}): train anew"
    if raw[:4] == b"PK\x03\x04":  # a zip: torch.save's format or numpy's .npz
        names, strings = [], set()
        with contextlib.suppress(Exception), zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
            strings = pickle_strings(z.read(next(n for n in names if n.endswith("data.pkl"))))
        if names and all(n.endswith(".npy") for n in names):
            return "is a replay file (.npz): pass the checkpoint.ckpt that names it"
        if {"args", "agent"} <= strings:  # the keys of this script's files before FORMAT had a version
            return (
                f"has the older format of {ours} files without a version, which this {ours} no longer reads (it reads "
                f"{FORMAT}): train anew"
            )
        return f"is a PyTorch file of other contents, not a {ours} checkpoint or model"
    if raw[:1] == b"\x80":
        return f"is a Python pickle, not a {ours} checkpoint or model (not unpickled: that could run code)"
    if raw[8:10] == b'{"':
        return f"is a safetensors file, not a {ours} checkpoint or model"
    return f"is corrupt or not a {ours} file (a .cleanrl_model or checkpoint.ckpt)"


def save_file(path: str, args: Args, payload: dict):
    """A final model ({"agent": ...}) or a checkpoint (with "optims") through torch.save, with the format, kind and flags."""
    kind = "checkpoint" if "optims" in payload else "model"
    payload = {"format": FORMAT, "kind": kind, "args": dict(vars(args)), **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_file(path: str, kind: Optional[str] = None) -> dict:
    """Read a model or checkpoint of this script (kind "checkpoint": only a checkpoint) with torch's weights-only
    unpickler; anything else is a UsageError that names what the file is."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    data, fmt = None, None
    if raw[:4] == b"PK\x03\x04":
        with contextlib.suppress(Exception):  # weights_only: a file that needs any other class is refused, not run
            data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            fmt = data.get("format") if isinstance(data, dict) else None
    elif raw[:1] and (0x80 <= raw[0] <= 0x8F or raw[0] in (0xDE, 0xDF)):  # a msgpack map: the JAX scripts' files
        found = re.search(rb"\xa6format(?:[\xa0-\xbf]|\xd9.)(cleanwm-[A-Za-z0-9_]+-\d+)", raw, re.S)  # "format": "cleanwm-..."
        fmt = found.group(1).decode() if found else None
    if fmt != FORMAT:
        raise UsageError(f"{path} {what_file(raw, fmt)}")
    if kind == "checkpoint" and data["kind"] != "checkpoint":
        raise UsageError(
            f"{path} is a final model (--save-model), not a training checkpoint: evaluate it with --evaluate {path}; "
            "training continues only from a checkpoint.ckpt (--checkpoint-every, or written on SIGTERM / Ctrl-C)"
        )
    return data


def args_from_dict(d: dict) -> Args:
    names = {f.name for f in fields(Args)}
    return Args(**{k: v for k, v in d.items() if k in names})


def config_diff(saved: dict, args: Args) -> list:
    return [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in vars(args).items() if k not in RESUME_FREE and saved.get(k) != v]


def training_state(agent, optims, global_step: int) -> dict:
    """Networks, optimizers (with their warm-up schedules) and every RNG the training draws from."""
    np_rng = np.random.get_state()
    rng = {
        "python": random.getstate(),
        "numpy": [np_rng[0], np_rng[1].tolist(), *np_rng[2:]],  # (a list of ints: no numpy array in the file)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    opt_states = [{**{k: o.state_dict() for k, o in opts.items()}, "sched": sched.state_dict()} for opts, sched in optims]
    return {"agent": agent.state_dict(), "optims": opt_states, "global_step": global_step, "rng": rng}


def replay_arrays(replays) -> dict:
    """Every level's replay as flat numpy arrays for np.savez (level i: L{i}_count, L{i}_keys, L{i}_rng, L{i}_data_*)."""
    arrays = {}
    for i, r in enumerate(replays):
        state = r.state_dict()
        arrays |= {f"L{i}_count": state["count"], f"L{i}_keys": state["keys"], f"L{i}_rng": np.array(json.dumps(state["rng"]))}
        arrays |= {f"L{i}_data_{k}": v for k, v in state["data"].items()}
    return arrays


def load_replays(replays, f):
    """The inverse of replay_arrays, from an open .npz."""
    for i, r in enumerate(replays):
        data = {k[len(f"L{i}_data_") :]: f[k] for k in f.files if k.startswith(f"L{i}_data_")}
        rng = json.loads(str(f[f"L{i}_rng"]))
        r.load_state_dict({"count": f[f"L{i}_count"], "keys": f[f"L{i}_keys"], "rng": rng, "data": data})


class Checkpoints:
    """Resume, checkpoints and stop signals of one training run (the helper that keeps main() a plain loop).

    A checkpoint is one unit of two files in runs/{run_name}/:
        checkpoint.step{N}.replay.npz   the replays of all levels after global_step N (N is stored inside too)
        checkpoint.ckpt                 networks, optimizers, RNG states, counters and flags; names its replay file
    save() writes the replays under their new name, then replaces checkpoint.ckpt, each through a .tmp<pid> file that
    is flushed to the disk and renamed; the second rename is the commit. Only after it are older replay files deleted.
    A kill at any instant thus leaves the old pair or the new pair, plus unnamed files that the next run here deletes.
    read() refuses a pair whose step counters differ.
    Data parallel: process r > 0 writes its replays to checkpoint.step{N}.rank{r}.replay.npz before the commit, and its
    RNG states go into rank 0's checkpoint.ckpt; a resume needs the same number of processes and restores each one's
    replays and RNG states (so runs/ must be one shared folder for several hosts)."""

    latest = "no checkpoint was written"  # self.last() of the current run, for an error outside this class (__main__)

    def __init__(self, args: Args, run_name: str, saved: Optional[dict] = None):
        self.args, self.run_name, self.dir = args, run_name, f"runs/{run_name}"
        self.path = os.path.join(self.dir, "checkpoint.ckpt")
        same = saved is not None and os.path.abspath(args.resume) == os.path.abspath(self.path)
        self.step = int(saved["global_step"]) if saved else None  # global_step of the last committed checkpoint
        self.last_path = args.resume if saved else None
        self.saved_step = self.step if same else None  # the checkpoint in self.path holds this step already
        self.keep = saved["replay"] if same else None  # the replay file that self.path names
        self.stop, self.writing = None, False  # the stop signal received; a write is under way
        self.received = None  # the first signal (data parallel: self.stop changes only in sync_stop, equal everywhere)
        Checkpoints.latest = self.last()

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
        world = int(saved.get("world_size", 1))
        if world != WORLD:  # data parallel: one replay file and RNG state per process
            raise UsageError(f"{args.resume} was written by a run of {world} process(es): resume it with {world}, not {WORLD}")
        saved["replay_path"], empty = None, " (--no-checkpoint-replay resumes with an empty replay)"
        if saved["replay"]:
            path = os.path.join(os.path.dirname(args.resume), rank_file(saved["replay"]))
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

    def restore(self, saved: dict, agent, optims, replays) -> tuple[int, dict]:
        """The saved training state put into agent, optims and replays: returns (global_step, the loop's counters)."""
        path = self.args.resume
        try:
            agent.load_state_dict(saved["agent"])
            for (opts, sched), state in zip(optims, saved["optims"], strict=True):
                for k, opt in opts.items():
                    opt.load_state_dict(state[k])
                sched.load_state_dict(state["sched"])
        except (RuntimeError, KeyError, ValueError):
            raise UsageError(
                f"{path}: the saved training state does not match this model (different spaces or sizes?)"
            ) from None
        for i, (lv, (opts, sched)) in enumerate(zip(agent.levels, optims, strict=True)):
            count = max([int(s["step"]) for s in opts["wm"].state.values()], default=0)
            if count != lv.updates or sched.last_epoch != lv.updates:
                raise UsageError(
                    f"{path} is inconsistent: level {i} has {lv.updates} updates, but an optimizer state after {count}"
                )
        if saved["replay_path"]:
            try:
                with np.load(saved["replay_path"]) as f:
                    load_replays(replays, f)
            except Exception:
                raise UsageError(f"cannot read {saved['replay_path']}: corrupt replay file") from None
        rng = saved["rng_ranks"][RANK] if WORLD > 1 else saved["rng"]
        random.setstate(rng["python"])
        np.random.set_state(tuple(rng["numpy"]))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        updates = agent.levels[0].updates
        print(f"resumed from {path} at global_step={self.step}, updates={updates}, replay={replays[0].steps()}")
        return self.step, saved["counters"]

    # ------------------------------------------------------------------------------------------------ writing
    def open_run_dir(self):
        """Create the run directory (once every check has passed) and delete what interrupted writes left in it."""
        check_writable(self.dir)
        if self.args.capture_video:
            check_writable(f"videos/{self.run_name}")
        os.makedirs(self.dir, exist_ok=True)
        self.clean(keep=self.keep)

    def save(self, agent, optims, replays, global_step: int, **counters) -> str:
        """Commit the training state and its replays as one checkpoint (see the class docstring); returns its path.
        `counters`: the loop's other state (plain values), given back by restore()."""
        if global_step == self.saved_step:
            return self.path  # nothing has changed since the last one
        self.writing = True
        try:
            os.makedirs(self.dir, exist_ok=True)
            name = f"checkpoint.step{global_step}.replay.npz" if self.args.checkpoint_replay else ""
            error, state = None, training_state(agent, optims, global_step)
            try:
                if name:  # 1. the replays under a name no checkpoint uses yet (data parallel: each process its own file)
                    arrays, path = replay_arrays(replays), os.path.join(self.dir, rank_file(name))
                    atomic_write(path, lambda f: np.savez(f, global_step=global_step, **arrays))
            except UsageError as e:
                if WORLD == 1:
                    raise
                error = str(e)
            if WORLD > 1:  # data parallel: every process's write error and RNG states to all; rank 0 commits all or none
                gathered = [None] * WORLD
                dist.all_gather_object(gathered, (error, state["rng"]))
                error = next((e for e, _ in gathered if e), None)
                state |= {"world_size": WORLD, "rng_ranks": [rng for _, rng in gathered]}
                if error is None and RANK == 0:
                    try:
                        self.commit(state, name, counters)
                    except (UsageError, OSError) as e:
                        error = str(e) if isinstance(e, UsageError) else f"cannot write into {self.dir}: {e.strerror or e}"
                error = [error]
                dist.broadcast_object_list(error, src=0)  # whether rank 0 committed
                if error[0]:
                    raise UsageError(error[0])
            else:
                self.commit(state, name, counters)
            self.step, self.saved_step, self.last_path = global_step, global_step, self.path
            Checkpoints.latest = self.last()
            self.clean(keep=name)  # 3. the older replay files
        except (UsageError, OSError) as e:
            message = str(e) if isinstance(e, UsageError) else f"cannot write into {self.dir}: {e.strerror or e}"
            raise UsageError(f"{message}; {self.last()}") from None
        finally:
            self.writing = False
        return self.path

    def commit(self, state: dict, replay: str, counters: dict):
        """2. checkpoint.ckpt, naming its replay file (the commit), and the renames flushed to the disk."""
        save_file(self.path, self.args, {"run_name": self.run_name, **state, "replay": replay, "counters": counters})
        if hasattr(os, "O_DIRECTORY"):  # the renames themselves reach the disk (POSIX)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)

    def save_for_inspection(self, agent, optims, global_step: int) -> str:
        """The training state after a non-finite loss (no replay), next to the last good checkpoint, which stays."""
        path = os.path.join(self.dir, "checkpoint_nonfinite.ckpt")
        save_file(path, self.args, {"run_name": self.run_name, **training_state(agent, optims, global_step), "replay": ""})
        return path

    def clean(self, keep: Optional[str]):
        """Delete the temporaries of processes that are gone and, unless keep is None, the replay files other than keep
        (data parallel: each process its own files, keep = rank 0's name)."""
        mine = r"checkpoint\.step\d+\.replay\.npz" if RANK == 0 else rf"checkpoint\.step\d+\.rank{RANK}\.replay\.npz"
        keep = rank_file(keep) if keep else keep
        for name in os.listdir(self.dir):
            tmp = re.fullmatch(r".+\.tmp(\d+)", name)
            if tmp:
                stale = not writing_elsewhere(int(tmp.group(1)))
            else:
                stale = keep is not None and name != keep and re.fullmatch(mine, name)
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
        if self.received is None:
            self.received, note = signum, "finishing this step, then writing a checkpoint and stopping"
            if WORLD == 1:
                self.stop = signum
        elif self.writing or signum == signal.SIGTERM:
            note = "already stopping: the checkpoint is written first"
        else:
            raise Stopped(f"stopped at once by a second {name}; {self.last()}", signum)
        os.write(2, f"{name}: {note}\n".encode())  # os.write, not print: print here may hit a print of the loop

    def sync_stop(self):
        """Data parallel: self.stop <- the first signal that any process received (all call it at the same step)."""
        (signum,) = all_ranks([self.received or 0], dist.ReduceOp.MAX)
        self.stop = signum or None


def rank_file(replay: str) -> str:
    """The replay file of this process: checkpoint.step{N}.replay.npz on rank 0, checkpoint.step{N}.rank{r}.replay.npz
    on rank r > 0 (data parallel)."""
    return replay.replace(".replay.npz", f".rank{RANK}.replay.npz") if RANK > 0 else replay


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


def evaluate(
    model_path,
    make_env,
    env_id,
    eval_episodes,
    run_name,
    Model=None,
    device=torch.device("cpu"),
    capture_video=False,
    seed=1,
    greedy=True,
):
    """CleanRL's evaluation signature: load a saved model (or checkpoint), run greedy episodes, return the episodic
    returns. env_id None: the env the model was trained on. Prints one line: the mean and std of the return (Crafter:
    + score)."""
    torch.manual_seed(seed)  # the posterior z is still sampled in greedy evaluation: --seed makes it reproducible
    saved = load_file(model_path)
    if capture_video:
        check_writable(f"videos/{run_name}")
    args = args_from_dict(saved["args"])
    env_id = args.env_id if env_id is None else env_id
    thunks = [make_env(env_id, seed, 0, capture_video, run_name)]
    envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    agent = (Model or Agent)(envs.single_observation_space, envs.single_action_space, args).to(device)
    try:
        agent.load_state_dict(saved["agent"])
    except RuntimeError:
        if args.env_id != env_id:
            raise UsageError(f"{model_path} was trained on --env-id {args.env_id}, not {env_id}") from None
        raise UsageError(f"{model_path}: the saved model does not match this model (different spaces or sizes?)") from None
    agent.eval()
    runner = HierarchyRunner(agent, 1, args, device, greedy=greedy)
    obs, _ = envs.reset(seed=seed)
    flags = common.EpisodeFlags(1)
    is_first, is_last, reward, is_terminal = flags.reset(), np.zeros(1, bool), np.zeros(1), np.zeros(1, bool)
    episodes = []
    while len(episodes) < eval_episodes:
        tt = lambda x: torch.as_tensor(x, device=device)
        action, _ = runner.step(tt(obs), tt(reward), tt(is_first), tt(is_terminal), first=is_first, last=is_last)
        obs, reward, term, trunc, infos = envs.step(env_action(action, envs.single_action_space))
        is_first, is_last, is_terminal = flags.step(term, trunc)
        episodes += common.episode_stats(infos)
    envs.close()
    returns = [e["r"] for e in episodes[:eval_episodes]]
    line = f"eval: {len(returns)} episodes, return {np.mean(returns):.2f} +- {np.std(returns):.2f}"
    achievements = [e["achievements"] for e in episodes[:eval_episodes] if e["achievements"] is not None]
    if achievements:
        line += f", crafter score {common.crafter_score(common.crafter_success_rates(achievements)):.2f} %"
    print(line)
    return returns


# ======================================================================================================================
# 11. Main loop (CleanRL skeleton): all levels act in the envs, store records, train at the train ratio, log, checkpoint
# ======================================================================================================================


def duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 1440}d{minutes // 60 % 24:02d}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Progress lines on stdout: at every multiple of --log-every policy steps (with the TensorBoard scalars) and at least
    every 30 s. The ETA uses the step rate since this process's first update ended, so neither the fast prefill with
    the initial policy nor the first update (allocations; torch.compile with --compile) is averaged in; a few updates
    later it says once how long the whole run takes."""

    def __init__(self, args: Args, device, global_step: int, updates: int):
        self.args, self.device, self.t0, self.step0, self.updates0 = args, device, time.time(), global_step, updates
        self.first = None  # when this process's first update started
        self.train = None  # (time, global_step, updates) once it has ended
        self.printed, self.told = self.t0, False
        if global_step < args.learning_starts:
            print(
                f"collecting {args.learning_starts - global_step:,} policy steps with the initial policy before the first "
                "update (--learning-starts)",
                flush=True,
            )

    def before_update(self, keys: int):
        """keys: training windows in level 0's replay (it trains once they make a batch)."""
        if self.first is None and keys >= self.args.batch_size // WORLD:
            self.first = time.time()
            note = "; torch.compile compiles the world-model loss first, a one-off of minutes" if self.args.compile else ""
            print(f"training starts: the first update of every level whose replay holds a batch{note}", flush=True)

    def after_updates(self, global_step: int, updates: int):
        now = time.time()
        if self.first is None or updates == self.updates0:  # no update in this process yet
            return
        if self.train is None:
            self.train = (now, global_step, updates)
            print(f"the first update took {now - self.first:.0f} s", flush=True)
        elif not self.told and updates - self.train[2] >= 3 and now - self.train[0] >= 10 and global_step > self.train[1]:
            self.told, left, total = True, self.eta(global_step), self.args.total_timesteps
            print(f"estimate: this run reaches step {total:,} in about {duration(left)} at the speed of its updates so far")
            if self.device.type == "cpu" and left > 3600:
                print(f"that is hours on this CPU; for a first look, try the CartPole quick start: {QUICK_START}", flush=True)

    def eta(self, global_step: int) -> float:
        t, s, _ = self.train
        return (self.args.total_timesteps - global_step) * (time.time() - t) / max(global_step - s, 1)

    def sps(self, global_step: int) -> float:
        return (global_step - self.step0) / max(time.time() - self.t0, 1e-9)

    def ups(self, updates: int) -> float:
        return (updates - self.updates0) / max(time.time() - self.t0, 1e-9)

    def log(self, global_step: int, updates: int, metrics: dict, extra: str = "") -> bool:
        """A progress line at every multiple of --log-every and at the end (then returns True: time for the TensorBoard
        scalars), and whenever 30 s have passed. metrics: level 0's latest."""
        now, args = time.time(), self.args
        grid = global_step % args.log_every < args.num_envs * WORLD or global_step >= args.total_timesteps
        if grid or now - self.printed >= 30:
            self.printed = now
            eta = duration(self.eta(global_step)) if self.train and global_step > self.train[1] else "-"  # "-": no rate yet
            loss = f"{float(metrics['wm_loss'].detach()):.3f}" if "wm_loss" in metrics else "-"  # "-": no update yet
            line = f"step {global_step}/{args.total_timesteps} | SPS {self.sps(global_step):.1f} | updates {updates}"
            print(f"{line} | ETA {eta} | loss {loss}{extra}")
        return grid


def code_usage(codes):
    """Usage of emitted 8x8 codes (M, 64): mean per-factor entropy (nats, max ln 8), distinct codes, slot histogram."""
    c = torch.cat(codes).reshape(-1, CODE_FACTORS, CODE_CLASSES).float()
    p = c.mean(0)  # (8, 8) empirical class frequencies per factor
    ids = c.argmax(-1)  # (M, 8)
    distinct = len({tuple(r) for r in ids.tolist()})
    return categorical_entropy(p).mean().item(), distinct, (ids + CODE_CLASSES * torch.arange(CODE_FACTORS, device=ids.device))


def log_scalars(writer, args: Args, metrics: list, runner, optims, replays, progress: Progress, global_step: int):
    """TensorBoard: every level's latest losses/*_L{i}, opt/grad_norm_L{i} (world model, before clipping), hieros/*_L{i}
    (imagined rewards, return scales, values), subgoal/* since the last call; CleanRL's charts/*."""
    for i, m in enumerate(metrics):
        for k, v in m.items():
            group = "opt" if k == "grad_norm" else "hieros" if k.startswith(("imag_", "return_scale", "value_")) else "losses"
            writer.add_scalar(f"{group}/{k}_L{i}", float(v.detach()) if torch.is_tensor(v) else v, global_step)
        if runner.emitted[i]:
            ent, distinct, slots = code_usage(list(runner.emitted[i]))
            writer.add_scalar(f"subgoal/code_entropy_L{i}", ent, global_step)
            writer.add_scalar(f"subgoal/distinct_codes_L{i}", distinct, global_step)
            writer.add_histogram(f"subgoal/code_slots_L{i}", slots.flatten().cpu(), global_step, bins=64)
            runner.emitted[i].clear()
        if runner.achieved[i]:
            achieved = torch.stack(list(runner.achieved[i])).mean().item()
            writer.add_scalar(f"subgoal/achieved_reward_L{i}", achieved, global_step)
            runner.achieved[i].clear()
    updates, sps = runner.levels[0].updates, int(progress.sps(global_step))
    writer.add_scalar("charts/SPS", sps, global_step)
    writer.add_scalar("charts/updates", updates, global_step)
    writer.add_scalar("charts/train_ratio", updates * args.batch_size * args.batch_length / max(1, global_step), global_step)
    writer.add_scalar("charts/UPS", progress.ups(updates), global_step)
    writer.add_scalar("charts/replay_size", replays[0].steps(), global_step)
    writer.add_scalar("charts/learning_rate", optims[0][0]["wm"].param_groups[0]["lr"], global_step)
    if args.env_id.startswith("atari100k_"):
        writer.add_scalar("charts/FPS", 4 * sps, global_step)


def log_episodes(writer, infos: dict, global_step: int, episodes_ach: list) -> int:
    """Print and log the episodes that ended in this step (returns how many); Crafter: success rates over all training
    episodes so far."""
    finished = common.episode_stats(infos)
    for ep in finished:
        print(f"global_step={global_step}, episodic_return={ep['r']:.2f}")
        writer.add_scalar("charts/episodic_return", ep["r"], global_step)
        writer.add_scalar("charts/episodic_length", ep["l"], global_step)
        if ep["achievements"] is not None:
            episodes_ach.append(ep["achievements"])
            rates = common.crafter_success_rates(episodes_ach)
            writer.add_scalar("charts/crafter_score", common.crafter_score(rates), global_step)
            for name, rate in zip(common.CRAFTER_ACHIEVEMENTS, rates, strict=True):
                writer.add_scalar(f"achievements/{name}", rate, global_step)
    return len(finished)


def save_and_evaluate(args: Args, agent, run_name: str, writer, eval_kw: dict):
    """--save-model: the final model to runs/{run_name}/{exp_name}.cleanrl_model, then --eval-episodes episodes with it."""
    model_path = f"runs/{run_name}/{args.exp_name}.cleanrl_model"
    save_file(model_path, args, {"agent": agent.state_dict()})
    print(f"model saved to {model_path}")
    if args.eval_episodes > 0:
        returns = evaluate(model_path, common.make_env, args.env_id, args.eval_episodes, f"{run_name}-eval", **eval_kw)
        for idx, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)


def describe(device, agent, args: Args):
    """The device in use (with a warning on the CPU) and the model's size, printed at the start."""
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if device.type == "cpu":
        why = "--no-cuda" if not args.cuda else "this torch build sees no CUDA GPU"
        print(
            f"WARNING: torch runs on the CPU ({why}). That is for tests and small models; HIEROS at the paper size needs "
            "a GPU and a CUDA build of torch (--cuda is on by default)."
        )
    print(f"model {args.model_size}, {args.max_hierarchy} levels: {sum(p.numel() for p in agent.parameters()):,} parameters")


def env_spaces(env_id: str):
    """(observation space, action space) of env_id, read from one env that is closed again."""
    env = common.make_env(env_id, 0, 0, False, "")()
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces


def main(args: Args):
    args = check_args(args)
    cuda = args.cuda and torch.cuda.is_available()
    device = torch.device((f"cuda:{LOCAL_RANK}" if WORLD > 1 else "cuda") if cuda else "cpu")
    eval_kw = dict(device=device, capture_video=args.capture_video, seed=args.seed)
    if args.evaluate:
        if RANK == 0:  # (under torchrun: rank 0 alone)
            evaluate(args.evaluate, common.make_env, args.env_id, args.eval_episodes, "eval", **eval_kw)
        return
    # every check before anything is created: the checkpoint to resume, the spaces, the replays' RAM, writable folders
    saved = Checkpoints.read(args) if args.resume else None
    run_name = saved["run_name"] if saved else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    obs_space, act_space = env_spaces(args.env_id)
    check_obs_space(obs_space), action_spec(act_space)  # the spaces the networks can take, before they are built
    # data parallel: join the process group; rank 0's run name; seeds offset by rank: process r runs the envs
    # r * num_envs .. (r + 1) * num_envs - 1 of a run with num_envs * WORLD envs (rank 0 = the single-process run)
    seed = args.seed + RANK * args.num_envs
    if WORLD > 1:
        dp_init(cuda)
        name = [run_name]
        dist.broadcast_object_list(name, src=0)
        run_name = name[0]

    # TRY NOT TO MODIFY: seeding
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.threads > 0 or args.model_size == "debug":
        torch.set_num_threads(args.threads if args.threads > 0 else 1)

    # ALGO LOGIC: initialize agent here (every level's networks, optimizers and replay)
    levels = f"{args.max_hierarchy} level" + ("s" if args.max_hierarchy > 1 else "")
    print(f"building the networks of {levels} (--model-size {args.model_size})", flush=True)
    agent = Agent(obs_space, act_space, args).to(device)
    replays = make_replays(agent, obs_space, args, seed)  # refuses replays beyond this machine's RAM
    optims = [make_optimizers(lv, args) for lv in agent.levels]
    ckpt = Checkpoints(args, run_name, saved)
    global_step, counters = ckpt.restore(saved, agent, optims, replays) if saved else (0, {})
    n_train_calls, credit = counters.get("n_train_calls", 0), counters.get("credit", 0.0)
    episodes, achievements = counters.get("episodes", 0), counters.get("achievements", [])
    ckpt.open_run_dir()  # checks that it (and videos/{run_name} with --capture-video) can be written, then creates it
    if WORLD > 1:  # data parallel: rank 0's fresh or resumed networks everywhere (resumed ones are equal already)
        broadcast_state(agent)
    if args.track and RANK == 0:
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
    writer = SummaryWriter(f"runs/{run_name}") if RANK == 0 else NullWriter()
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    describe(device, agent, args)
    loss_fn = torch.compile(wm_loss) if args.compile else wm_loss
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16_autocast)

    def save_checkpoint() -> str:
        c = {"n_train_calls": n_train_calls, "credit": credit, "episodes": episodes, "achievements": achievements}
        return ckpt.save(agent, optims, replays, global_step, **c)

    # TRY NOT TO MODIFY: start the game
    envs = common.make_vector_env(args.env_id, args.num_envs, seed, args.capture_video and RANK == 0, run_name)
    obs, _ = envs.reset(seed=seed + global_step)  # a resumed run must not replay the first run's episodes
    flags = common.EpisodeFlags(args.num_envs)
    is_first, is_last = flags.reset(), np.zeros(args.num_envs, bool)
    reward, is_terminal = np.zeros(args.num_envs, np.float32), np.zeros(args.num_envs, bool)
    runner = HierarchyRunner(agent, args.num_envs, args, device)
    metrics = [dict() for _ in agent.levels]  # the latest metrics of each level (tensors: no host sync until logging)
    nonfinite = {}  # loss term -> accumulated "was non-finite" flag (a tensor)
    charted = [False] * len(agent.levels)  # whether a level's first actor update (its entropy) was charted yet
    chart_now = False  # scalars right after each level's first actor update: exploration is visible from the start
    updates_per_step = args.train_ratio / (args.batch_size * args.batch_length)  # level-0 updates per policy step
    steps = args.num_envs * WORLD  # policy steps per iteration, summed over the envs of all processes
    progress = Progress(args, device, global_step, agent.levels[0].updates)
    ckpt.catch_signals()
    while global_step < args.total_timesteps and ckpt.stop is None:
        # ALGO LOGIC: action logic (all levels filter and decide; records go to each acting level's replay)
        agent.eval()
        tt = lambda x: torch.as_tensor(x, device=device)
        action, records = runner.step(tt(obs), tt(reward), tt(is_first), tt(is_terminal), first=is_first, last=is_last)
        agent.train()
        for r, rec in zip(replays, records, strict=True):
            if rec is not None:
                r.add(rec)

        # TRY NOT TO MODIFY: execute the game and log data.
        obs, reward, terminations, truncations, infos = envs.step(env_action(action, act_space))
        is_first, is_last, is_terminal = flags.step(terminations, truncations)
        reward = reward.astype(np.float32)
        global_step += steps
        episodes += log_episodes(writer, infos, global_step, achievements)

        # ALGO LOGIC: training (train_ratio / (B T) level-0 updates per policy step; level L on every 4^L-th call)
        if global_step >= args.learning_starts:
            credit += steps * updates_per_step
            while credit >= 1.0:
                credit -= 1.0
                progress.before_update(len(replays[0]))
                for i in train_call(agent, optims, replays, n_train_calls, args, loss_fn, autocast, metrics, nonfinite):
                    if "entropy" in metrics[i] and not charted[i]:
                        charted[i] = chart_now = True
                n_train_calls += 1
            progress.after_updates(global_step, agent.levels[0].updates)

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        if progress.log(global_step, agent.levels[0].updates, metrics[0], f" | episodes {episodes}") or chart_now:
            chart_now = False
            bad = [k for k, v in nonfinite.items() if bool(v)]
            if WORLD > 1:  # data parallel: the union over the processes (the same keys everywhere), so all stop here
                keys = sorted(nonfinite)
                bad = [k for k, b in zip(keys, all_ranks([k in bad for k in keys], dist.ReduceOp.MAX), strict=True) if b]
            if bad:
                path = ckpt.save_for_inspection(agent, optims, global_step) if RANK == 0 else "rank 0's run directory"
                raise FloatingPointError(
                    f"non-finite loss detected in losses/{bad[0]} (all: {', '.join(bad)}) at update "
                    f"{agent.levels[0].updates}; training state written to {path}"
                )
            log_scalars(writer, args, metrics, runner, optims, replays, progress, global_step)
        if args.checkpoint_every and global_step % args.checkpoint_every < steps:
            print(f"checkpoint written to {save_checkpoint()} at global_step={global_step}")
        if WORLD > 1:  # data parallel: a stop signal that reached any process stops all of them after this same step
            ckpt.sync_stop()

    if ckpt.stop is not None or args.checkpoint_every:
        path = save_checkpoint()
        if ckpt.stop is not None:
            envs.close()
            writer.close()
            raise ckpt.stopped(global_step, path)
    if args.save_model and RANK == 0:
        save_and_evaluate(args, agent, run_name, writer, eval_kw)
    envs.close()
    writer.close()


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # every line reaches a redirected log at once
    try:
        main(tyro.cli(Args))
        status, message = 0, ""
    except (UsageError, common.EnvIdError) as e:
        status, message = 2, f"error: {e}"
    except FloatingPointError as e:
        status, message = 1, f"error: {e}"
    except Stopped as e:
        status, message = 128 + e.signum, str(e)
    except OSError as e:  # a write into the run's folders failed outside the checkpoint code (e.g. TensorBoard's)
        if not (e.filename and os.fsdecode(e.filename).startswith(("runs", "videos"))):
            raise
        status, message = 2, f"error: cannot write {os.fsdecode(e.filename)}: {e.strerror or e}; {Checkpoints.latest}"
    finally:
        if dist.is_available() and dist.is_initialized():  # data parallel: leave the process group, also after an error
            dist.destroy_process_group()
    # a later signal is ignored (SIG_IGN survives Python's finalization, a Python handler does not): the shutdown ends
    # quietly with this run's status (no "Exception ignored in atexit", no death by the signal)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    if message:
        print(message, file=sys.stderr)
    sys.exit(status)
