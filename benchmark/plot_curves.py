"""Plot learning curves from the TensorBoard event files under runs/ and print a summary table.

    python benchmark/plot_curves.py --runs runs/CartPole-v1__dreamerv3* --tag charts/episodic_return \
        --out benchmark/results/dreamerv3_cartpole.png --title "DreamerV3 CartPole-v1" [--baseline 22.0]

Each run is one line (x = global_step); several globs can be given, one label each (--labels).
"""

import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def load_scalars(run_dir: str, tag: str):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return scalars(acc, tag)


def scalars(acc: EventAccumulator, tag: str):
    """(steps, values) of one tag of a loaded accumulator; a resumed run's overwritten points are dropped."""
    if tag not in acc.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    events = acc.Scalars(tag)
    return drop_overwritten(np.array([e.step for e in events]), np.array([e.value for e in events]))


def drop_overwritten(x, y):
    """A run resumed from a checkpoint logs again from the checkpoint's step, so its directory holds two event files
    that overlap. Where the steps go back, the earlier file's points from that step on were overwritten: drop them."""
    keep = np.ones(len(x), bool)
    for i in np.where(x[1:] < x[:-1])[0] + 1:
        keep[:i] &= x[:i] < x[i]
    return x[keep], y[keep]


def smooth(y, window):
    if len(y) < window or window <= 1:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", nargs="+", required=True, help="run directories or globs")
    p.add_argument("--labels", nargs="*", default=None)
    p.add_argument("--tag", nargs="+", default=["charts/episodic_return"],
                   help="scalar tag; with several, each run uses the first it has (e.g. losses/entropy losses/entropy_L0)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--smooth", type=int, default=10)
    p.add_argument("--baseline", type=float, default=None, help="horizontal line, e.g. the random policy's return")
    p.add_argument("--bin", type=int, default=0, help="also print mean +- standard error per bin of this many env steps")
    a = p.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4))
    summary = []
    for i, pattern in enumerate(a.runs):
        for run in sorted(glob.glob(pattern)) or [pattern]:
            x, y = next((xy for xy in (load_scalars(run, t) for t in a.tag) if len(xy[1])), (np.zeros(0), np.zeros(0)))
            if not len(y):
                continue
            label = a.labels[i] if a.labels and i < len(a.labels) else os.path.basename(run.rstrip("/"))
            ys = smooth(y, a.smooth)
            ax.plot(x[len(x) - len(ys) :], ys, label=label)
            tail = y[-max(1, len(y) // 10) :]
            summary.append({"run": run, "label": label, "points": len(y), "last_step": int(x[-1]),
                            "final_mean": float(tail.mean()), "max": float(y.max())})  # fmt: skip
            if a.bin:  # episodes grouped by the env step at which they ended
                rows = []
                for lo in range(0, int(x[-1]) + 1, a.bin):
                    v = y[(x >= lo) & (x < lo + a.bin)]
                    if len(v):
                        sem = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
                        rows.append(f"{lo // 1000}-{(lo + a.bin) // 1000}k: {v.mean():.2f} +- {sem:.2f} (n={len(v)})")
                summary[-1]["bins"] = rows
    if a.baseline is not None:
        ax.axhline(a.baseline, color="gray", linestyle="--", label="random policy")
    ax.set_xlabel("env steps")
    ax.set_ylabel(" / ".join(a.tag))
    ax.set_title(a.title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
