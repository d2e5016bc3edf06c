"""Crafter success rates and score of the training episodes inside windows of env steps, read back from TensorBoard.

    python benchmark/crafter_window.py "runs/crafter__dreamerv3_crafter_1m_r32_lr1e-4__1__*" --window 16000 [--random r.json]

The scripts log `achievements/<name>` as the success rate (%) over *all* training episodes so far (the standard
Crafter score is defined that way). The number of episodes with achievement i among the first n episodes is
round(rate_i(n) * n / 100), so differencing these counts at two window edges gives the rates inside the window.
`--random` takes the JSON line of `benchmark/random_baseline.py` (with its per-achievement rates) for a side column.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plot_curves import scalars  # noqa: E402

import common  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run", help="run directory (or glob)")
    p.add_argument("--window", type=int, default=16000, help="env steps per window")
    p.add_argument("--random", default=None, help="file with the JSON output of benchmark/random_baseline.py")
    a = p.parse_args()
    runs = sorted(glob.glob(a.run))
    if len(runs) != 1:  # one run per call: a glob matching several seeds would silently pick one
        sys.exit(f"error: '{a.run}' matches {len(runs)} run directories, expected 1")
    run = runs[0]
    acc = EventAccumulator(run, size_guidance={"scalars": 0})
    acc.Reload()
    steps, returns = scalars(acc, "charts/episodic_return")  # a resumed run's overwritten episodes are dropped
    counts = []  # (episodes, achievements): cumulative unlock counts after each episode
    for name in common.CRAFTER_ACHIEVEMENTS:
        rates = scalars(acc, f"achievements/{name}")[1]
        n = np.arange(1, len(rates) + 1)
        counts.append(np.rint(rates * n / 100.0))
    counts = np.stack(counts, 1)
    assert len(counts) == len(steps), "episode logs of different lengths"
    counts = np.concatenate([np.zeros((1, counts.shape[1])), counts])  # count before the first episode = 0
    random = json.load(open(a.random)) if a.random else None
    rows = []
    for lo in range(0, int(steps[-1]) + 1, a.window):
        idx = np.where((steps >= lo) & (steps < lo + a.window))[0]
        if not len(idx):
            continue
        hits = counts[idx[-1] + 1] - counts[idx[0]]  # unlocks inside the window
        rates = 100.0 * hits / len(idx)
        unlocked = {k: round(float(r), 1) for k, r in zip(common.CRAFTER_ACHIEVEMENTS, rates, strict=True) if r > 0}
        rows.append({"window": f"{lo // 1000}-{(lo + a.window) // 1000}k", "episodes": int(len(idx)),
                     "return": round(float(returns[idx].mean()), 2),
                     "return_se": round(float(returns[idx].std(ddof=1) / np.sqrt(len(idx))), 2),
                     "crafter_score": round(common.crafter_score(np.clip(rates, 0, 100)), 2),
                     "rates": unlocked})  # fmt: skip
    print(json.dumps({"run": run, "windows": rows, "random": random}, indent=1))


if __name__ == "__main__":
    main()
