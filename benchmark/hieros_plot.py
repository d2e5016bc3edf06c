"""Curves from the TensorBoard event files of hieros_s5_torch.py runs (no W&B needed).

    .venv/bin/python benchmark/hieros_plot.py --runs 'runs/CartPole-v1__hieros_cartpole_L*' --name cartpole
writes benchmark/results/hieros_<name>_return.png (charts/episodic_return, one line per run),
benchmark/results/hieros_<name>_subgoals.png (subgoal-code entropy / distinct codes / achieved subgoal reward and the
imagined reward of every head, per level) and benchmark/results/hieros_<name>_summary.json (first/last returns).
"""

import argparse
import glob
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(run):
    acc = EventAccumulator(run, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: np.array([(e.step, e.value) for e in acc.Scalars(tag)]) for tag in acc.Tags()["scalars"]}


def smooth(y, k):
    if len(y) < k:
        return y
    return np.convolve(y, np.ones(k) / k, mode="valid")


def label(run):
    m = re.search(r"__(hieros[^_]*(?:_[^_]+)*)__(\d+)__", os.path.basename(run))
    return f"{m.group(1)} seed {m.group(2)}" if m else os.path.basename(run)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/CartPole-v1__hieros_cartpole_L*")
    p.add_argument("--name", default="cartpole")
    p.add_argument("--smooth", type=int, default=10)
    a = p.parse_args()
    runs = sorted(glob.glob(a.runs))
    data = {run: scalars(run) for run in runs}
    os.makedirs("benchmark/results", exist_ok=True)
    summary = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, s in data.items():
        if "charts/episodic_return" not in s:
            continue
        r = s["charts/episodic_return"]
        k = min(a.smooth, max(1, len(r) // 5))
        ax.plot(r[k - 1 :, 0] if len(r) >= k else r[:, 0], smooth(r[:, 1], k), label=label(run))
        last = r[r[:, 0] >= r[-1, 0] * 0.9, 1]
        summary[label(run)] = dict(episodes=len(r), steps=int(r[-1, 0]), first10_mean=float(r[:10, 1].mean()),
                                   last10pct_steps_mean=float(last.mean()), max=float(r[:, 1].max()))  # fmt: skip
        if "eval/episodic_return" in s:
            summary[label(run)]["eval_mean"] = float(s["eval/episodic_return"][:, 1].mean())
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"episodic return (moving mean of {a.smooth} episodes)")
    ax.set_title(f"hieros_s5_torch.py: {a.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"benchmark/results/hieros_{a.name}_return.png", dpi=110)
    tags = ["subgoal/code_entropy_L{}", "subgoal/distinct_codes_L{}", "subgoal/achieved_reward_L{}",
            "hieros/imag_ext_reward_L{}", "hieros/imag_subgoal_reward_L{}", "hieros/imag_novelty_reward_L{}"]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, tag in zip(axes.flatten(), tags, strict=True):
        for run, s in data.items():
            for lvl in range(3):
                if tag.format(lvl) in s:
                    v = s[tag.format(lvl)]
                    ax.plot(v[:, 0], v[:, 1], label=f"{label(run)} L{lvl}", lw=1)
        ax.set_title(tag.format("*"), fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(f"benchmark/results/hieros_{a.name}_subgoals.png", dpi=100)
    with open(f"benchmark/results/hieros_{a.name}_summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
