# cleanwm common/scores.py: the Crafter score and the Atari100k human-normalised score, computed the standard way.
#
# Crafter (danijar/crafter README "Evaluation", analysis/common.py):
#   s_i   = percentage (0..100) of *all training episodes within the budget* in which achievement i was unlocked
#   score = exp(mean_i ln(1 + s_i)) - 1           (geometric mean with a 1 % offset over the 22 achievements)
# Atari100k (conventions.md section 13.2, table = danijar/dreamerv3 baselines.yaml `atari57_gamer`):
#   HNS = (agent - random) / (human - random);  aggregate over games by mean, median and IQM.
import warnings
from collections.abc import Iterable
from typing import Optional

import numpy as np

from .envs import CRAFTER_ACHIEVEMENTS


def crafter_success_rates(episodes: Iterable[dict]) -> np.ndarray:
    """Success rate in percent of each of the 22 achievements over finished episodes.

    `episodes` holds one achievements dict per episode (unlock counts as in info["achievements"]); an achievement
    counts as a success when its count is >= 1. Returns an array of 22 rates in CRAFTER_ACHIEVEMENTS order.
    """
    episodes = list(episodes)
    if not episodes:
        return np.zeros(len(CRAFTER_ACHIEVEMENTS))
    hits = np.array([[ep.get(name, 0) >= 1 for name in CRAFTER_ACHIEVEMENTS] for ep in episodes], float)
    return 100.0 * hits.mean(0)


def crafter_score(success_rates_percent) -> float:
    """Crafter score in percent from the 22 success rates in percent: exp(mean ln(1 + s)) - 1."""
    rates = np.asarray(success_rates_percent, np.float64)
    if rates.shape != (len(CRAFTER_ACHIEVEMENTS),):
        raise ValueError(f"expected {len(CRAFTER_ACHIEVEMENTS)} success rates, got shape {rates.shape}")
    if np.any(rates < 0) or np.any(rates > 100):
        raise ValueError("success rates must be percentages in [0, 100]")
    if np.all(rates <= 1) and np.any(rates > 0):
        warnings.warn("all success rates are <= 1: were fractions passed instead of percentages?", stacklevel=2)
    return float(np.exp(np.nanmean(np.log1p(rates))) - 1)


# Random and human ("gamer") scores of the 26 Atari100k games.
ATARI_SCORES = {
    # game: (random, human)
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5), "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6), "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}  # fmt: skip


def _game_name(game: str) -> str:
    from .envs import ATARI100K_GAMES

    key = game.removeprefix("atari100k_")
    if key in ATARI_SCORES:
        return key
    if key.lower() in ATARI100K_GAMES:
        return ATARI100K_GAMES[key.lower()]
    for name in ATARI_SCORES:
        if name.lower() == key.lower().replace("_", ""):
            return name
    raise ValueError(f"unknown Atari100k game '{game}'")


def atari_hns(game: str, score: float) -> float:
    """Human-normalised score of one game: (score - random) / (human - random). `game` may be 'Pong' or 'atari100k_pong'."""
    random_score, human_score = ATARI_SCORES[_game_name(game)]
    return (float(score) - random_score) / (human_score - random_score)


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50 % of the values (rliable's definition, trimming 25 % each side)."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    n = len(x)
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(x[lo:hi].mean()) if hi > lo else float(x.mean())


def atari_aggregate(scores: dict, seeds_axis: Optional[int] = None) -> dict:
    """Mean, median and IQM of the HNS over games. `scores` maps game -> raw score (or list of per-seed scores,
    averaged over seeds first)."""
    hns = np.array([atari_hns(game, np.mean(score)) for game, score in scores.items()])
    return {"mean": float(hns.mean()), "median": float(np.median(hns)), "iqm": iqm(hns), "games": len(hns)}
