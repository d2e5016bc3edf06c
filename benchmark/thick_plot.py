"""Plot scalar curves of THICK runs from their TensorBoard event files.

    python benchmark/thick_plot.py --runs "runs/CartPole-v1__thick_cartpole__*" --out benchmark/results/thick_cartpole
Writes <out>.png (episodic return and THICK diagnostics over env steps) and <out>.json (the curves).
"""

import argparse
import glob
import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = ["charts/episodic_return", "thick/acting_change_rate", "thick/change_rate", "thick/hl_valid_frac",
        "thick/v_long_mean", "stats/ret_mean"]  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/CartPole-v1__thick_cartpole__*")
    ap.add_argument("--out", default="benchmark/results/thick_cartpole")
    a = ap.parse_args()
    curves = {}
    for run in sorted(glob.glob(a.runs)):
        acc = EventAccumulator(run, size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        curves[run] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in TAGS if t in tags}
    with open(a.out + ".json", "w") as f:
        json.dump(curves, f)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for run, c in curves.items():
        label = run.split("__")[-2] if "__" in run else run
        for ax, tag in zip(axes, ["charts/episodic_return", "thick/acting_change_rate", "thick/v_long_mean"], strict=True):
            if tag in c:
                xs, ys = zip(*c[tag], strict=True)
                ax.plot(xs, ys, label=f"seed {label}")
                ax.set_title(tag)
                ax.set_xlabel("env steps")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=100)
    print(f"wrote {a.out}.png and {a.out}.json for {len(curves)} runs")


if __name__ == "__main__":
    main()
