"""Tests of common/: env wrappers, world-model flags from vector envs, and scores (values, not only shapes)."""

import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import common
from common import AtariPreprocess, EnvIdError, EpisodeFlags, crafter_score, crafter_success_rates, make_env

# ---------------------------------------------------------------------------------------------------------------------
# Crafter
# ---------------------------------------------------------------------------------------------------------------------


def test_crafter_spaces_and_dtype():
    env = make_env("crafter", seed=0, idx=0, capture_video=False, run_name="t")()
    assert env.observation_space.shape == (64, 64, 3) and env.observation_space.dtype == np.uint8
    assert env.action_space.n == 17
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(0)
    assert obs.dtype == np.uint8 and isinstance(reward, float) and not terminated and not truncated
    assert "inventory" in info and "achievements" not in info  # achievements only at the end of an episode


def test_crafter_seeding_gives_identical_first_observations():
    a = make_env("crafter", seed=3, idx=0, capture_video=False, run_name="t")()
    b = make_env("crafter", seed=3, idx=0, capture_video=False, run_name="t")()
    c = make_env("crafter", seed=4, idx=0, capture_video=False, run_name="t")()
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    oc, _ = c.reset(seed=4)
    assert np.array_equal(oa, ob)
    assert not np.array_equal(oa, oc)


def test_crafter_truncation_and_achievements_at_episode_end():
    env = make_env("crafter", seed=0, idx=0, capture_video=False, run_name="t", length=20)()
    env.reset(seed=0)
    for t in range(20):
        obs, reward, terminated, truncated, info = env.step(0)  # noop: the player cannot die within 20 steps
        if t < 19:
            assert not (terminated or truncated)
    assert truncated and not terminated  # the length limit is a truncation, not a terminal
    assert set(info["achievements"]) == set(common.CRAFTER_ACHIEVEMENTS)
    assert "episode" in info and info["episode"]["l"] == 20


def test_crafter_death_is_terminated():
    env = make_env("crafter", seed=0, idx=0, capture_video=False, run_name="t")()
    env.reset(seed=0)
    env.unwrapped._env._player.health = 0  # kill the player: crafter reports discount 0 on the next step
    _, _, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and "achievements" in info


def test_crafter_noreward_gives_zero_reward():
    env = make_env("crafter_noreward", seed=0, idx=0, capture_video=False, run_name="t")()
    env.reset(seed=0)
    env.unwrapped._env._player.health = 3  # losing/regaining health would give +-0.1 with rewards on
    rewards = [env.step(env.action_space.sample())[1] for _ in range(30)]
    assert all(r == 0.0 for r in rewards)


# ---------------------------------------------------------------------------------------------------------------------
# Atari100k
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("game,actions", [("pong", 6), ("breakout", 4), ("ms_pacman", 9), ("boxing", 18)])
def test_atari_spaces_and_minimal_actions(game, actions):
    env = make_env(f"atari100k_{game}", seed=0, idx=0, capture_video=False, run_name="t")()
    assert env.action_space.n == actions
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert 0 <= _preprocess(env).last_noops <= 30


def _preprocess(env):
    while not isinstance(env, AtariPreprocess):
        env = env.env
    return env


def test_atari_noops_in_range_and_vary():
    env = make_env("atari100k_pong", seed=0, idx=0, capture_video=False, run_name="t")()
    counts = []
    for seed in range(8):
        env.reset(seed=seed)
        counts.append(_preprocess(env).last_noops)
    assert all(0 <= c <= 30 for c in counts) and len(set(counts)) > 1


def test_atari_act_moves_the_game():
    # ale-py 0.10.x had a no-op `act(action)`: check that different actions give different screens.
    env = make_env("atari100k_breakout", seed=0, idx=0, capture_video=False, run_name="t")()
    env.reset(seed=0)
    env.step(1)  # FIRE launches the ball
    a = [env.step(2)[0] for _ in range(10)][-1]  # RIGHT
    env.reset(seed=0)
    env.step(1)
    b = [env.step(3)[0] for _ in range(10)][-1]  # LEFT
    assert not np.array_equal(a, b)


class FakeFrames(gym.Env):
    """Single-frame env whose frame k is filled with a known pattern, to check pooling and reset buffers."""

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, episode_len=100):
        self.k, self.episode, self.episode_len = 0, 0, episode_len

    def frame(self, k=None):
        rng = np.random.default_rng(1000 * self.episode + (self.k if k is None else k))
        return rng.integers(0, 256, (210, 160, 3), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.k = 0
        return self.frame(), {}

    def step(self, action):
        self.k += 1
        return self.frame(), 1.0, self.k >= self.episode_len, False, {}


def test_atari_pooling_is_max_of_last_two_frames_and_rewards_sum():
    from PIL import Image

    env = AtariPreprocess(FakeFrames(), noops=0)
    env.reset(seed=0)
    obs, reward, *_ = env.step(0)
    inner = env.env
    assert inner.k == 4
    pooled = np.maximum(inner.frame(3), inner.frame(4))  # the last two of the 4 repeated frames
    expected = np.asarray(Image.fromarray(pooled).resize((64, 64), Image.BILINEAR))
    assert reward == 4.0  # summed over the 4 repeated frames
    assert np.array_equal(obs, expected)


def test_atari_first_frame_after_reset_is_fresh():
    from PIL import Image

    env = AtariPreprocess(FakeFrames(episode_len=8), noops=0)
    env.reset(seed=0)
    for _ in range(2):
        _, _, terminated, _, _ = env.step(0)
    assert terminated
    obs, _ = env.reset()
    fresh = np.asarray(Image.fromarray(env.env.frame()).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(obs, fresh)  # not pooled with the previous episode's last frame


def test_atari_no_life_loss_terminal():
    env = make_env("atari100k_breakout", seed=0, idx=0, capture_video=False, run_name="t")()
    env.reset(seed=0)
    ale = env.unwrapped.ale
    lives = ale.lives()
    for _ in range(400):  # never fire again after losing a ball: lives drop, the episode must go on
        _, _, terminated, truncated, _ = env.step(1 if ale.lives() == lives else 0)
        if ale.lives() < lives:
            break
    assert ale.lives() < lives and not terminated and not truncated


# ---------------------------------------------------------------------------------------------------------------------
# Vector envs and world-model flags
# ---------------------------------------------------------------------------------------------------------------------


class Countdown(gym.Env):
    """obs = steps taken in the episode; terminates after 3 steps (env 0) or truncates after 2 (env 1)."""

    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, truncate):
        self.truncate, self.t = truncate, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= (2 if self.truncate else 3)
        return np.array([self.t], np.float32), 1.0, done and not self.truncate, done and self.truncate, {}


def test_episode_flags_on_hand_checked_episodes():
    envs = gym.vector.SyncVectorEnv([lambda: Countdown(False), lambda: Countdown(True)])
    flags = EpisodeFlags(2)
    obs, _ = envs.reset(seed=0)
    rows = [(obs[:, 0].tolist(), flags.reset().tolist(), [False, False], [False, False], [0.0, 0.0])]
    for _ in range(5):
        obs, rew, term, trunc, _ = envs.step(np.zeros(2, int))
        first, last, terminal = flags.step(term, trunc)
        rows.append((obs[:, 0].tolist(), first.tolist(), last.tolist(), terminal.tolist(), rew.tolist()))
    # env 0: obs 0 1 2 3 | 0 1  (terminates at obs 3); env 1: obs 0 1 2 | 0 1 2 (truncates at obs 2)
    assert [r[0] for r in rows] == [[0, 0], [1, 1], [2, 2], [3, 0], [0, 1], [1, 2]]
    assert [r[1] for r in rows] == [[True, True], [False, False], [False, False], [False, True], [True, False],
                                    [False, False]]  # fmt: skip
    assert [r[2] for r in rows] == [[False, False], [False, False], [False, True], [True, False], [False, False],
                                    [False, True]]  # fmt: skip
    assert [r[3] for r in rows] == [[False, False], [False, False], [False, False], [True, False], [False, False],
                                    [False, False]]  # fmt: skip
    assert [r[4] for r in rows][4] == [0.0, 1.0]  # the reset step of env 0 carries reward 0


def test_vector_env_episode_stats():
    envs = common.make_vector_env("CartPole-v1", 2, seed=0)
    envs.reset(seed=0)
    found = []
    for _ in range(600):
        _, _, _, _, infos = envs.step(envs.action_space.sample())
        found += common.episode_stats(infos)
        if len(found) >= 2:
            break
    assert found and all(f["r"] == f["l"] and f["achievements"] is None for f in found)  # CartPole: reward 1 per step


def test_crafter_vector_episode_stats_have_achievements():
    envs = common.make_vector_env("crafter", 1, seed=0, length=5)
    envs.reset(seed=0)
    stats = []
    for _ in range(6):
        _, _, _, _, infos = envs.step(np.zeros(1, int))
        stats += common.episode_stats(infos)
    assert len(stats) == 1 and stats[0]["l"] == 5 and set(stats[0]["achievements"]) == set(common.CRAFTER_ACHIEVEMENTS)


def test_gym_passthrough_continuous():
    env = make_env("Pendulum-v1", seed=0, idx=0, capture_video=False, run_name="t")()
    assert isinstance(env.action_space, gym.spaces.Box) and env.observation_space.shape == (3,)


def test_unknown_env_id_is_one_line_error():
    for bad in ["NoSuchEnv-v9", "atari100k_notagame", "crafterr"]:
        with pytest.raises(EnvIdError) as err:
            make_env(bad, seed=0, idx=0, capture_video=False, run_name="t")
        assert "\n" not in str(err.value) and bad.split("_")[-1] in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------------


def test_crafter_score_values():
    assert crafter_score(np.full(22, 10.0)) == pytest.approx(10.0, abs=1e-9)
    one = np.zeros(22)
    one[0] = 100.0
    assert crafter_score(one) == pytest.approx(101 ** (1 / 22) - 1, abs=1e-12)
    assert crafter_score(one) == pytest.approx(0.2334, abs=1e-4)
    assert crafter_score(np.zeros(22)) == 0.0
    for bad in [np.full(22, -1.0), np.full(22, 101.0)]:
        with pytest.raises(ValueError):
            crafter_score(bad)
    with pytest.raises(ValueError):
        crafter_score(np.full(21, 10.0))


def test_crafter_success_rates_from_episodes():
    names = common.CRAFTER_ACHIEVEMENTS
    eps = [{n: 0 for n in names} for _ in range(4)]
    eps[0]["collect_wood"] = 3
    eps[1]["collect_wood"] = 1
    eps[1]["wake_up"] = 1
    rates = crafter_success_rates(eps)
    assert rates[names.index("collect_wood")] == 50.0 and rates[names.index("wake_up")] == 25.0
    assert rates.sum() == 75.0


def test_atari_hns():
    for game, (random_score, human_score) in common.ATARI_SCORES.items():
        assert common.atari_hns(game, human_score) == pytest.approx(1.0)
        assert common.atari_hns(game, random_score) == pytest.approx(0.0)
    assert len(common.ATARI_SCORES) == 26 == len(common.ATARI100K_GAMES)
    assert common.atari_hns("atari100k_pong", 14.6) == pytest.approx(1.0)
    agg = common.atari_aggregate({"Pong": 14.6, "Boxing": 0.1, "Breakout": [1.7, 30.5]})
    assert agg["mean"] == pytest.approx(0.5) and agg["median"] == pytest.approx(0.5) and agg["games"] == 3
    assert common.iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(3.5)
    assert not math.isnan(agg["iqm"])


def test_capture_video_records_env_zero(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env("crafter", seed=0, idx=0, capture_video=True, run_name="vid", length=5)()
    env.reset(seed=0)
    for _ in range(5):
        env.step(0)
    env.close()
    assert list((tmp_path / "videos" / "vid").glob("*.mp4"))
    other = make_env("crafter", seed=0, idx=1, capture_video=True, run_name="vid2")()  # only env 0 records
    assert not isinstance(other.env, gym.wrappers.RecordVideo)


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark")


def _plot_module():
    sys.path.insert(0, BENCH)
    import plot  # benchmark/plot.py, the plotting entry point of benchmark/<algo>.sh

    return plot


def test_drop_overwritten_keeps_the_resumed_points():
    # benchmark/plot.py: a run resumed at step 6 re-logs from there; the first file's points >= 6 are dropped
    drop_overwritten = _plot_module().drop_overwritten
    x = np.array([1, 5, 9, 12, 6, 8, 13])
    kept_x, kept_y = drop_overwritten(x, 10 * x)
    assert kept_x.tolist() == [1, 5, 6, 8, 13] and kept_y.tolist() == [10, 50, 60, 80, 130]
    assert drop_overwritten(np.array([1, 2, 2, 3]), np.arange(4))[0].tolist() == [1, 2, 2, 3]  # no resume: unchanged


def test_plot_summary_numbers():
    # the numbers the docs quote from benchmark/plot.py: first episode >= target, first 10-episode mean >= target, bins
    plot = _plot_module()
    x = np.arange(1, 13) * 100  # episodes ending at steps 100 .. 1200
    y = np.array([10, 500, 390] + [400] * 9, float)
    # 10-episode means: y[0:10] -> 370, y[1:11] -> 409, y[2:12] -> 399; the first episode >= 400 ends at x[1] = 200
    assert plot.first_sustained(x, y, 400) == (200, 1100)  # y[1:11]: its 10th episode ends at x[10] = 1100
    assert plot.first_sustained(x, y, 410) == (200, None)
    assert plot.first_sustained(x, y, 501) == (None, None)
    rows = plot.bins(x, y, 500)  # [0, 500): 10, 500, 390, 400; [500, 1000): 5 x 400; [1000, 1500): 3 x 400
    assert [r["n"] for r in rows] == [4, 5, 3] and rows[0]["mean"] == 325.0 and rows[1]["se"] == 0.0
    assert rows[0]["se"] == round(float(np.std([10, 500, 390, 400], ddof=1) / 2), 2)
    s = plot.summarize(x, y, evals=np.array([500.0, 480.0]), target=400)
    assert s["last10_mean"] == 399.0 and s["eval_mean"] == 490.0 and s["eval_std"] == 10.0
    assert s["last10pct_mean"] == 400.0 and s["target"] == {"value": 400, "first_episode_at": 200, "mean10_at": 1100}
    s = plot.summarize(x, y, target=400, wall=np.arange(1, 13) * 10.0)  # --wall: episode k logged k x 10 s after the start
    assert s["target"]["mean10_wall_s"] == 110.0 and s["last_step_wall_s"] == 120.0
    assert plot.summarize(x, y, target=410, wall=np.arange(1, 13) * 10.0)["target"]["mean10_wall_s"] is None


# every benchmark script (top level, speed/, probes/); benchmark/parity/ has its own tests
BENCH_DIRS = ("", "speed", "probes")
MODULES = {"speed/random_batch.py", "probes/saved_agent.py"}  # imported by other benchmark scripts, not run
SCRIPTS = sorted(
    os.path.join(d, f)
    for d in BENCH_DIRS
    for f in os.listdir(os.path.join(BENCH, d))
    if f.endswith((".py", ".sh")) and os.path.join(d, f) not in MODULES
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_scripts_answer_help(script):
    """Every benchmark script prints its usage on --help and exits 0, without starting a measurement."""
    cmd = [sys.executable if script.endswith(".py") else "bash", os.path.join(BENCH, script), "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
