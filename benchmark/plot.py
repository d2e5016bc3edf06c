"""Learning curves and summaries of the benchmark runs, read from the TensorBoard event files under runs/ (no W&B).

One entry point for the three scripts (the `plot` group of benchmark/<algo>.sh calls it):

    python benchmark/plot.py --runs "runs/CartPole-v1__dreamerv3_cartpole_debug__*" --target 400 --baseline 22.3 \
        --title "dreamerv3_jax.py, CartPole-v1" --out benchmark/results/dreamerv3_cartpole.png
    python benchmark/plot.py --runs "runs/crafter__a__1__*" "runs/crafter__b__1__*" --labels A B --bin 4000 \
        --crafter-window 12000 --random benchmark/results/crafter_random.json --baseline 1.37 --out <png>
    python benchmark/plot.py --runs "runs/CartPole-v1__thick_cartpole_debug__*" \
        --panels thick/acting_change_rate thick/v_long_mean --out <png>          # THICK diagnostics next to the return
    python benchmark/plot.py --runs "runs/crafter__hieros_*" --panels "subgoal/code_entropy_L{L}" \
        "subgoal/achieved_reward_L{L}" "hieros/imag_ext_reward_L{L}" --out <png>  # {L}: one line per HIEROS level

Writes the figure to --out and the summary to --json (default: --out with .json). The summary holds, per run:
  episodes, last_step, first10_mean, last10_mean (last 10 episodes), last10pct_mean (episodes in the last 10 % of the
  steps), max, eval_mean / eval_std (`eval/episodic_return`, written by --save-model), and on request
  target (--target V: the first episode >= V and the step from which 10 consecutive episodes average >= V),
  with --wall also the wall-clock seconds (since the run's event file was created) of that 10-episode mean and of the
  last episode, bins (--bin N: mean +- standard error of the episodes that ended in each N-step bin) and
  windows (--crafter-window N: Crafter success rates and score of the training episodes inside each N-step window).
A run resumed from a checkpoint logs again from the checkpoint's step; its overwritten points are dropped.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = 3  # "{L}" in a --panels tag expands to the HIEROS levels 0 .. LEVELS-1


# ---------------------------------------------------------------------------------------------------------------------
# 1. Reading the event files
# ---------------------------------------------------------------------------------------------------------------------
def load_run(run_dir: str, walls: dict | None = None) -> dict:
    """{tag: (steps, values)} of every scalar tag of one run directory, with a resumed run's overwritten points dropped.
    With `walls` (a dict), also fills walls[tag] = (steps, seconds since the event file was created, i.e. since the run
    started, less the imports); only meaningful for a run that was not resumed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # imported late: --help stays fast

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = drop_overwritten(np.array([e.step for e in events]), np.array([e.value for e in events], float))
        if walls is not None:
            t0 = acc.FirstEventTimestamp()
            walls[tag] = drop_overwritten(np.array([e.step for e in events]), np.array([e.wall_time - t0 for e in events]))
    return out


def drop_overwritten(x, y):
    """A run resumed from a checkpoint logs again from the checkpoint's step, so its directory holds two event files
    that overlap. Where the steps go back, the earlier file's points from that step on were overwritten: drop them."""
    keep = np.ones(len(x), bool)
    for i in np.where(x[1:] < x[:-1])[0] + 1:  # every place where the step goes back
        keep[:i] &= x[:i] < x[i]
    return x[keep], y[keep]


def run_name_parts(run_dir: str):
    """(exp_name, seed) from the scripts' run-directory name {env_id}__{exp_name}__{seed}__{time}; None if not one."""
    m = re.match(r".*?__(.+)__(\d+)__\d+$", os.path.basename(run_dir.rstrip("/")))
    return (m.group(1), m.group(2)) if m else None


def run_label(run_dir: str, label=None, several=False) -> str:
    """The legend entry: '<exp_name> seed <seed>', or the given label (+ the seed where it names several runs)."""
    parts = run_name_parts(run_dir)
    if label is None:
        return f"{parts[0]} seed {parts[1]}" if parts else os.path.basename(run_dir.rstrip("/"))
    return f"{label}, seed {parts[1]}" if several and parts else label


# ---------------------------------------------------------------------------------------------------------------------
# 2. Summaries (numbers the docs quote)
# ---------------------------------------------------------------------------------------------------------------------
def smooth(y, window: int):
    """Moving mean over `window` points ('valid' part only: len(y) - window + 1 points)."""
    if len(y) < window or window <= 1:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def first_sustained(x, y, target: float, k: int = 10):
    """(step of the first episode >= target, step of the last episode of the first k consecutive episodes whose mean is
    >= target); None where never. With episodes ordered by the step at which they ended."""
    hit = np.where(y >= target)[0]
    means = smooth(y, k) if len(y) >= k else np.zeros(0)  # means[i] = mean of y[i : i + k]
    sustained = np.where(means >= target)[0]
    return (int(x[hit[0]]) if len(hit) else None, int(x[sustained[0] + k - 1]) if len(sustained) else None)


def bins(x, y, width: int) -> list:
    """Mean and standard error of the episodes that ended in each bin [lo, lo + width) of env steps."""
    rows = []
    for lo in range(0, int(x[-1]) + 1, width):
        v = y[(x >= lo) & (x < lo + width)]
        if len(v):
            se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
            rows.append({"steps": f"{lo // 1000}-{(lo + width) // 1000}k", "mean": round(float(v.mean()), 2),
                         "se": None if se is None else round(se, 2), "n": int(len(v))})
    return rows


def crafter_windows(x, returns, rates_by_name: dict, width: int) -> list:
    """Crafter success rates (%) and score of the training episodes inside each `width`-step window.

    The scripts log `achievements/<name>` as the rate over *all* episodes so far (the Crafter score is defined that way),
    so the number of episodes with achievement i among the first n is round(rate_i(n) * n / 100), and differencing
    these counts at two window edges gives the rate inside the window."""
    import common  # the repository's env module: achievement names and the score

    counts = []  # (episodes, achievements): cumulative unlock counts after each episode
    for name in common.CRAFTER_ACHIEVEMENTS:
        r = rates_by_name.get(name, np.zeros(len(returns)))
        counts.append(np.rint(r * np.arange(1, len(r) + 1) / 100.0))
    counts = np.concatenate([np.zeros((1, len(counts))), np.stack(counts, 1)])  # count before the first episode = 0
    rows = []
    for lo in range(0, int(x[-1]) + 1, width):
        idx = np.where((x >= lo) & (x < lo + width))[0]
        if not len(idx):
            continue
        rates = 100.0 * (counts[idx[-1] + 1] - counts[idx[0]]) / len(idx)  # unlocks inside the window / episodes
        v = returns[idx]
        names = common.CRAFTER_ACHIEVEMENTS
        rows.append({"window": f"{lo // 1000}-{(lo + width) // 1000}k", "episodes": int(len(idx)),
                     "return": round(float(v.mean()), 2),
                     "return_se": round(float(v.std(ddof=1) / np.sqrt(len(v))), 2) if len(v) > 1 else None,
                     "crafter_score": round(common.crafter_score(np.clip(rates, 0, 100)), 2),
                     "rates": {k: round(float(r), 1) for k, r in zip(names, rates, strict=True) if r > 0}})
    return rows


def summarize(x, y, evals=None, target=None, bin_width=0, wall=None) -> dict:
    """The per-run numbers of the summary (see the module docstring); x, y: episode end steps and returns; wall: the
    seconds since the start at which each episode was logged (adds wall-clock times to `target`)."""
    tail = y[x >= 0.9 * x[-1]]  # episodes in the last 10 % of the steps
    s = {"episodes": int(len(y)), "last_step": int(x[-1]), "first10_mean": round(float(y[:10].mean()), 2),
         "last10_mean": round(float(y[-10:].mean()), 2), "last10pct_mean": round(float(tail.mean()), 2),
         "max": round(float(y.max()), 2)}
    if evals is not None and len(evals):
        s.update(eval_mean=round(float(evals.mean()), 2), eval_std=round(float(evals.std()), 2), eval_episodes=len(evals))
    if target is not None:
        first, sustained = first_sustained(x, y, target)
        s["target"] = {"value": target, "first_episode_at": first, "mean10_at": sustained}
        if wall is not None:
            s["target"]["mean10_wall_s"] = None if sustained is None else round(float(wall[x == sustained][0]), 1)
            s["last_step_wall_s"] = round(float(wall[-1]), 1)
    if bin_width:
        s["bins"] = bins(x, y, bin_width)
    return s


# ---------------------------------------------------------------------------------------------------------------------
# 3. Command line: figure + summary
# ---------------------------------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run directories or globs (one label each)")
    p.add_argument("--labels", nargs="*", default=None, help="one per --runs entry (default: '<exp_name> seed <seed>')")
    p.add_argument("--tag", nargs="+", default=["charts/episodic_return"],
                   help="the curve's scalar tag; with several, each run uses the first it has")
    p.add_argument("--panels", nargs="*", default=[], help="more tags, one subplot each; '{L}' = one line per level")
    p.add_argument("--out", required=True, help="figure (.png)")
    p.add_argument("--json", default=None, help="summary file (default: --out with .json)")
    p.add_argument("--title", default="")
    p.add_argument("--smooth", type=int, default=10, help="moving mean over this many episodes")
    p.add_argument("--baseline", type=float, default=None, help="horizontal line, e.g. the random policy's return")
    p.add_argument("--target", type=float, default=None, help="report the first episode and 10-episode mean >= this")
    p.add_argument("--bin", type=int, default=0, help="mean +- standard error per bin of this many env steps")
    p.add_argument("--crafter-window", type=int, default=0, help="Crafter success rates and score per window of steps")
    p.add_argument("--random", default=None, help="JSON of benchmark/random_baseline.py, copied into the summary")
    p.add_argument("--wall", action="store_true", help="add wall-clock seconds since the run started to the summary")
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)  # `common`, for --crafter-window

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []  # (label, run_dir, scalars)
    for i, pattern in enumerate(a.runs):
        matches = sorted(glob.glob(pattern))
        for run in matches:
            given = a.labels[i] if a.labels and i < len(a.labels) else None
            walls = {} if a.wall else None
            runs.append((run_label(run, given, several=len(matches) > 1), run, load_run(run, walls), walls))
    if not runs:
        sys.exit(f"error: no run directory matches {a.runs}")

    fig, axes = plt.subplots(1, 1 + len(a.panels), figsize=(6 + 4.5 * len(a.panels), 4), squeeze=False)
    ax = axes[0, 0]
    command = "python benchmark/plot.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {"title": a.title, "command": command, "baseline": a.baseline, "runs": []}
    for label, run, s, walls in runs:
        tag = next((t for t in a.tag if t in s and len(s[t][1])), None)
        if tag is None:
            continue
        x, y = s[tag]
        wall = walls[tag][1] if walls else None
        ys = smooth(y, a.smooth)
        ax.plot(x[len(x) - len(ys) :], ys, label=label)
        evals = s.get("eval/episodic_return", (None, None))[1]
        row = {"label": label, "run": run, **summarize(x, y, evals, a.target, a.bin, wall)}
        if a.crafter_window:
            rates = {t.split("/", 1)[1]: v[1] for t, v in s.items() if t.startswith("achievements/")}
            row["windows"] = crafter_windows(x, y, rates, a.crafter_window)
        summary["runs"].append(row)
    if a.baseline is not None:
        ax.axhline(a.baseline, color="gray", linestyle="--", label="random policy")
    if a.target is not None:
        ax.axhline(a.target, color="green", linestyle=":", label=f"target {a.target:g}")
    ax.set(xlabel="env steps", ylabel=f"{' / '.join(a.tag)} (mean of {a.smooth})", title=a.title)
    ax.legend(fontsize=7)
    for ax, tag in zip(axes[0, 1:], a.panels, strict=True):  # diagnostics, one subplot per tag
        for label, _, s, _ in runs:
            for lvl in range(LEVELS) if "{L}" in tag else [None]:
                t = tag.format(L=lvl) if lvl is not None else tag
                if t in s:
                    ax.plot(*s[t], label=label if lvl is None else f"{label} L{lvl}", lw=1)
        ax.set(xlabel="env steps", title=tag.replace("{L}", "*"))
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.savefig(a.out, dpi=100)
    if a.random:
        summary["random"] = json.load(open(a.random))
    out = a.json or os.path.splitext(a.out)[0] + ".json"
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {a.out} and {out} ({len(summary['runs'])} runs)")


if __name__ == "__main__":
    main()
