# cleanwm common/envs.py: environment thunks and wrappers shared by the three scripts (no algorithm code here).
#
# Supported env ids
#   crafter, crafter_reward, crafter_noreward   Crafter 1.8 (old gym API) wrapped into gymnasium: 64x64x3 uint8, 17 actions
#   atari100k_<game>                            the 26 Atari100k games with the DreamerV3 protocol (see AtariPreprocess)
#   any registered gymnasium id                 e.g. CartPole-v1 (vector obs), Pendulum-v1 (continuous actions)
#
# World-model flags from a gymnasium>=1.0 vector env (default NEXT_STEP autoreset)
#   step k returns (obs_k, r_k, terminated_k, truncated_k). When env i finishes at step k, the *next* call of step()
#   ignores the action for env i and returns the first observation of the new episode with reward 0 and no done flags.
#   So every observation, the final one included, appears exactly once in the stream, which is what a world model needs:
#       is_first_k    = env i was (re)set before obs_k: True after envs.reset() and on the step after a done
#       is_last_k     = terminated_k | truncated_k          (obs_k is the last observation of its episode)
#       is_terminal_k = terminated_k                        (a true end: the continue target is 0; a time limit is not)
#   EpisodeFlags below derives exactly these flags; tests/test_common.py checks them on a hand-made episode.
import re
from collections.abc import Callable
from typing import Any, Optional

import gymnasium as gym
import numpy as np

# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


class EnvIdError(ValueError):
    """Raised for an env id that none of the supported families knows. The message is one line."""


# --------------------------------------------------------------------------------------------------------------------
# Crafter
# --------------------------------------------------------------------------------------------------------------------

CRAFTER_ACHIEVEMENTS = [
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling", "collect_stone",
    "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant", "make_iron_pickaxe",
    "make_iron_sword", "make_stone_pickaxe", "make_stone_sword", "make_wood_pickaxe", "make_wood_sword",
    "place_furnace", "place_plant", "place_stone", "place_table", "wake_up",
]  # fmt: skip


class CrafterEnv(gym.Env):
    """Crafter in the gymnasium API.

    Crafter 1.8 speaks the old gym API (reset() -> obs, step() -> 4 values) and imports gym only optionally, so the
    spaces are built here. `done` is split into terminated (the player died: info["discount"] == 0) and truncated (the
    10000-step episode length ran out). On the last step of an episode info["achievements"] holds the unlock counts of
    that episode (a dict over the 22 achievements); info["inventory"] is passed through on every step.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, reward: bool = True, size: int = 64, length: int = 10000, seed: Optional[int] = None,
                 render_mode: Optional[str] = None, render_size: int = 256):  # fmt: skip
        import crafter  # imported lazily so that non-Crafter users need not have it

        self._env = crafter.Env(area=(64, 64), view=(9, 9), size=(size, size), reward=reward, length=length, seed=seed)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self._env.action_names))  # 17
        self.render_mode = render_mode
        self._render_size = render_size

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        if seed is not None:
            # Crafter derives each world from hash((seed, episode index)); restart that sequence for a new seed.
            self._env._seed = int(seed)
            self._env._episode = 0
        obs = self._env.reset()
        return np.asarray(obs, np.uint8), {"inventory": dict(self._env._player.inventory)}

    def step(self, action):
        obs, reward, done, info = self._env.step(int(action))
        terminated = bool(done and info["discount"] == 0.0)
        truncated = bool(done and not terminated)
        out = {"inventory": dict(info["inventory"])}
        if done:
            out["achievements"] = dict(info["achievements"])
        return np.asarray(obs, np.uint8), float(reward), terminated, truncated, out

    def render(self):
        return np.asarray(self._env.render((self._render_size, self._render_size)), np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# Atari100k (DreamerV3 protocol, danijar/dreamerv3 embodied/envs/atari.py and configs.yaml `atari100k`)
# --------------------------------------------------------------------------------------------------------------------

# snake_case id (as in DreamerV3's task names) -> ALE game name
ATARI100K_GAMES = {
    "alien": "Alien", "amidar": "Amidar", "assault": "Assault", "asterix": "Asterix", "bank_heist": "BankHeist",
    "battle_zone": "BattleZone", "boxing": "Boxing", "breakout": "Breakout", "chopper_command": "ChopperCommand",
    "crazy_climber": "CrazyClimber", "demon_attack": "DemonAttack", "freeway": "Freeway", "frostbite": "Frostbite",
    "gopher": "Gopher", "hero": "Hero", "jamesbond": "Jamesbond", "kangaroo": "Kangaroo", "krull": "Krull",
    "kung_fu_master": "KungFuMaster", "ms_pacman": "MsPacman", "pong": "Pong", "private_eye": "PrivateEye",
    "qbert": "Qbert", "road_runner": "RoadRunner", "seaquest": "Seaquest", "up_n_down": "UpNDown",
}  # fmt: skip


class AtariPreprocess(gym.Wrapper):
    """The DreamerV3 Atari100k protocol on top of an ALE env that steps single frames (frameskip=1).

    - action repeat 4, reward summed over the repeated frames, observation = max over the last 2 raw frames;
    - 0..30 NOOP actions (uniform) after each reset; sticky actions off and the minimal action set are set on the
      inner env; no terminal on life loss (only game over ends the episode); no reward clipping;
    - the 210x160 RGB frame is resized to 64x64 with a bilinear filter (Pillow), giving uint8 64x64x3;
    - the 108k-frame cap ends an episode as `truncated` (DreamerV3 labels it terminal; a time limit is not a true end).
    On reset both pooling buffers hold the fresh frame. (The original copied the buffers the wrong way round, so the
    first observation of an episode showed the previous episode's last screen: danijar/dreamerv3#213.)
    """

    def __init__(self, env: gym.Env, repeat: int = 4, noops: int = 30, size: int = 64, max_frames: int = 108_000):
        super().__init__(env)
        self.repeat, self.noops, self.size, self.max_frames = repeat, noops, size, max_frames
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        shape = env.observation_space.shape  # (210, 160, 3)
        self._buffers = [np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)]  # the last two raw frames
        self._frames = 0
        self.last_noops = 0  # how many no-ops the last reset took (for tests)

    def _obs(self) -> np.ndarray:
        from PIL import Image

        pooled = np.maximum(self._buffers[0], self._buffers[1])  # max-pool over the last 2 frames
        image = Image.fromarray(pooled).resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(image, np.uint8)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        frame, info = self.env.reset(seed=seed, options=options)
        self._frames = 0
        self.last_noops = int(self.np_random.integers(0, self.noops + 1)) if self.noops else 0
        for _ in range(self.last_noops):
            frame, _, terminated, truncated, info = self.env.step(0)  # action 0 is NOOP in every minimal action set
            self._frames += 1
            if terminated or truncated:
                frame, info = self.env.reset()
        self._buffers[0][...] = frame  # both buffers hold the fresh frame (the reset-frame bug fix)
        self._buffers[1][...] = frame
        return self._obs(), info

    def step(self, action):
        total, terminated, truncated, info = 0.0, False, False, {}
        for k in range(self.repeat):
            frame, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            self._frames += 1
            if k >= self.repeat - 2:  # keep the last two frames for the max-pool
                self._buffers[k - (self.repeat - 2)][...] = frame
            if terminated or truncated:
                self._buffers[0][...] = frame  # episode ended mid-repeat: pool over the final frame only
                self._buffers[1][...] = frame
                break
        if self._frames >= self.max_frames and not terminated:
            truncated = True
        return self._obs(), total, terminated, truncated, info


def make_atari100k(game: str, render_mode: Optional[str] = None) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{game}-v5",
        obs_type="rgb",
        frameskip=1,  # the wrapper repeats actions itself so it can pool the last two frames
        repeat_action_probability=0.0,  # sticky actions off
        full_action_space=False,  # minimal action set
        max_num_frames_per_episode=108_000,
        render_mode=render_mode,
    )
    return AtariPreprocess(env)


# --------------------------------------------------------------------------------------------------------------------
# Float images in [0, 1] -> uint8
# --------------------------------------------------------------------------------------------------------------------


def is_float01_image(space: gym.Space) -> bool:
    """A Box of (H, W, C) float images whose bounds lie in [0, 1]."""
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and np.issubdtype(space.dtype, np.floating)):
        return False
    return bool(np.all(space.low >= 0) and np.all(space.high <= 1))


class UInt8Images(gym.ObservationWrapper):
    """Float image observations in [0, 1] -> uint8 round(255 x), the form every script stores and normalises images in
    (a float image divided by 255 again, or cast to uint8 directly, would be almost all zeros)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, env.observation_space.shape, np.uint8)

    def observation(self, observation):
        return np.round(np.clip(observation, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# make_env (CleanRL style thunk)
# --------------------------------------------------------------------------------------------------------------------

SUPPORTED = "crafter, crafter_reward, crafter_noreward, atari100k_<game> (26 games) or a registered gymnasium id"


def _atari100k_game(env_id: str) -> Optional[str]:
    match = re.fullmatch(r"atari100k_(\w+)", env_id)
    if not match:
        return None
    name = match.group(1).lower()
    if name in ATARI100K_GAMES:
        return ATARI100K_GAMES[name]
    for game in ATARI100K_GAMES.values():  # also accept 'mspacman' / 'MsPacman'
        if game.lower() == name.replace("_", ""):
            return game
    raise EnvIdError(f"unknown Atari100k game in env id '{env_id}'; known games: {', '.join(sorted(ATARI100K_GAMES))}")


def check_env_id(env_id: str) -> str:
    """Return the family of `env_id` ('crafter', 'atari100k' or 'gym'), or raise EnvIdError with one line."""
    if env_id in ("crafter", "crafter_reward", "crafter_noreward"):
        return "crafter"
    if env_id.startswith("atari100k_"):
        _atari100k_game(env_id)
        return "atari100k"
    if env_id in gym.registry:
        return "gym"
    if env_id.startswith("ALE/"):
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:
            pass
        if env_id in gym.registry:
            return "gym"
    raise EnvIdError(f"unknown env id '{env_id}'; supported: {SUPPORTED}")


def make_env(env_id: str, seed: int, idx: int, capture_video: bool, run_name: str, **options: Any) -> Callable[[], gym.Env]:
    """Return a thunk that builds env number `idx` (CleanRL style); env 0 records video when `capture_video`.

    `options` go to the env: Crafter accepts `size`, `length`; gymnasium ids accept any gym.make keyword. Float image
    observations in [0, 1] are converted to uint8 (UInt8Images).
    The id is checked now, so a bad id fails before any worker starts.
    """
    family = check_env_id(env_id)

    def thunk() -> gym.Env:
        record = capture_video and idx == 0
        render_mode = "rgb_array" if record else None
        if family == "crafter":
            env = CrafterEnv(reward=env_id != "crafter_noreward", seed=seed + idx, render_mode=render_mode, **options)
        elif family == "atari100k":
            env = make_atari100k(_atari100k_game(env_id), render_mode=render_mode)
        else:
            env = gym.make(env_id, render_mode=render_mode, **options)
            if is_float01_image(env.observation_space):
                env = UInt8Images(env)
        if record:
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}", disable_logger=True)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed + idx)
        return env

    return thunk


def make_vector_env(env_id: str, num_envs: int, seed: int, capture_video: bool = False, run_name: str = "",
                    asynchronous: bool = False, **options: Any) -> gym.vector.VectorEnv:  # fmt: skip
    """`num_envs` copies in a Sync (or Async) vector env with gymnasium's default next-step autoreset."""
    if num_envs < 1:
        raise EnvIdError(f"num_envs must be >= 1, got {num_envs}")
    thunks = [make_env(env_id, seed, i, capture_video, run_name, **options) for i in range(num_envs)]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return cls(thunks, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


class EpisodeFlags:
    """Derives is_first / is_last / is_terminal for each observation of a next-step-autoreset vector env.

    >>> flags = EpisodeFlags(n); is_first = flags.reset()              # after envs.reset(): all True
    >>> obs, rew, term, trunc, info = envs.step(a)
    >>> is_first, is_last, is_terminal = flags.step(term, trunc)     # flags of `obs`
    """

    def __init__(self, num_envs: int):
        self._done = np.zeros(num_envs, bool)  # did the previous step end env i's episode?

    def reset(self) -> np.ndarray:
        self._done = np.zeros_like(self._done)
        return np.ones_like(self._done)  # the observations returned by envs.reset() all start an episode

    def step(self, terminated, truncated):
        is_first = self._done.copy()  # the previous step ended the episode -> this obs starts a new one
        is_last = np.logical_or(terminated, truncated)
        is_terminal = np.asarray(terminated, bool)
        self._done = is_last.copy()
        return is_first, is_last, is_terminal


def episode_stats(infos: dict) -> list:
    """Finished episodes of one vector step: [{"env": i, "r": return, "l": length, "achievements": dict or None}]."""
    out = []
    if "episode" not in infos:
        return out
    for i in np.flatnonzero(infos.get("_episode", np.zeros(0, bool))):
        ach = None
        if "achievements" in infos and infos.get("_achievements", np.ones(i + 1, bool))[i]:
            ach = {k: int(v[i]) for k, v in infos["achievements"].items() if not k.startswith("_")}
        out.append({"env": int(i), "r": float(infos["episode"]["r"][i]), "l": int(infos["episode"]["l"][i]),
                    "achievements": ach})  # fmt: skip
    return out
