"""cleanwm common: environment thunks and wrappers plus the standard scores. No algorithm code lives here."""

from .envs import (
    ATARI100K_GAMES,
    CRAFTER_ACHIEVEMENTS,
    AtariPreprocess,
    CrafterEnv,
    EnvIdError,
    EpisodeFlags,
    UInt8Images,
    check_env_id,
    episode_stats,
    is_float01_image,
    make_env,
    make_vector_env,
)
from .scores import ATARI_SCORES, atari_aggregate, atari_hns, crafter_score, crafter_success_rates, iqm

__all__ = [
    "ATARI100K_GAMES", "ATARI_SCORES", "CRAFTER_ACHIEVEMENTS", "AtariPreprocess", "CrafterEnv", "EnvIdError",
    "EpisodeFlags", "atari_aggregate", "atari_hns", "check_env_id", "crafter_score", "crafter_success_rates",
    "episode_stats", "iqm", "make_env", "make_vector_env", "UInt8Images", "is_float01_image",
]  # fmt: skip
