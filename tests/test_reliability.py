"""Reliability of dreamerv3_jax.py and thick_dreamer_jax.py: every bad input is a one-line `error: ...` with exit status
2 before anything is created; a checkpoint and its replay form one unit that a SIGKILL at any instant cannot split;
stop signals end without a traceback; files of other scripts or of an older format are refused by name.

The bad-input table runs each script's real `__main__` block in this process (runpy, argv patched): the same code path
as `python <script>.py ...` without paying an interpreter and a JAX import per row. One row per script also runs as a
real subprocess. The real runs (the kill test, the read-only run directory) are processes forked by conftest.py's fork
server: each is killed, signalled and ends as `python dreamerv3_jax.py` does, without an interpreter start and a JAX
import per run. The kill test runs dreamerv3_jax.py only: test_checkpoint_code_is_the_same_in_both_scripts shows that
thick_dreamer_jax.py shares that code line for line."""

import contextlib
import inspect
import io
import os
import random
import re
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import flax
import gymnasium as gym
import numpy as np
import pytest
import tyro

import common
import dreamerv3_jax as D
import thick_dreamer_jax as T

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"dreamerv3_jax": D, "thick_dreamer_jax": T}
TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "16", "--imag-horizon", "3"]


# ---------------------------------------------------------------------------------------------------------------------
# Test environments with the observation spaces of the bad-input table
# ---------------------------------------------------------------------------------------------------------------------


class SpaceEnv(gym.Env):
    """Random observations of the given space, 2 actions, episodes of 10 steps."""

    def __init__(self, space: gym.Space, render_mode=None):
        self.observation_space, self.action_space, self.t = space, gym.spaces.Discrete(2), 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 0.0, False, self.t >= 10, {}


def image(side, dtype=np.uint8, low=0, high=255):
    return gym.spaces.Box(low, high, (side, side, 3), dtype)


SPACES = {
    "Image30": image(30),
    "Image128": image(128),
    "FloatImage01": image(16, np.float32, 0.0, 1.0),
    "FloatImageSigned": image(16, np.float32, -1.0, 1.0),
    "DictObs": gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (3,), np.float32)}),
}
for _name, _space in SPACES.items():
    if f"cleanwm-test/{_name}-v0" not in gym.registry:
        gym.register(f"cleanwm-test/{_name}-v0", entry_point=SpaceEnv, kwargs={"space": _space})


# ---------------------------------------------------------------------------------------------------------------------
# Running a script's __main__ block in this process
# ---------------------------------------------------------------------------------------------------------------------


def run_main(script: str, argv: list, cwd: Path) -> tuple:
    """`python <script>.py argv` in this process: (exit status, stdout, stderr). Warnings go to stderr as with Python's
    default filters, so a row that warns fails the one-line check as it would in a real run."""
    old_cwd, old_argv = os.getcwd(), sys.argv
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    os.chdir(cwd)
    sys.argv = [f"{script}.py", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as seen:
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.filterwarnings("ignore", module="gymnasium")  # the env checker's remarks on an env (pyproject.toml too)
            try:
                runpy.run_path(str(ROOT / f"{script}.py"), run_name="__main__")
                status = 0
            except SystemExit as e:
                status = e.code
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        for s, h in handlers.items():
            signal.signal(s, h)
    out.seek(0)
    stderr = err.getvalue() + "".join(f"{w.category.__name__}: {w.message}\n" for w in seen)
    return status, out.read(), stderr


def tree(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_one_line_error(status, stderr, needle):
    lines = stderr.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, stderr[-3000:])
    assert needle in lines[0] and "Traceback" not in stderr, stderr


# ---------------------------------------------------------------------------------------------------------------------
# Files that --resume and --evaluate must refuse by name
# ---------------------------------------------------------------------------------------------------------------------


def script_args(mod, argv):
    return mod.check_args(tyro.cli(mod.Args, args=argv))


def final_model(mod, cwd):
    mod.save_file(str(cwd / "m.cleanrl_model"), script_args(mod, ["--env-id", "CartPole-v1"]), {"params": {}})
    return "m.cleanrl_model"


def other_script_checkpoint(mod, cwd):
    other = T if mod is D else D
    other.save_file(str(cwd / "other.ckpt"), script_args(other, ["--env-id", "CartPole-v1"]), {"state": {}})
    return "other.ckpt"


def torch_checkpoint(mod, cwd):
    import torch

    torch.save({"args": {"env_id": "CartPole-v1"}, "agent": {"w": torch.zeros(2)}}, cwd / "checkpoint.pt")
    return "checkpoint.pt"


def safetensors_file(mod, cwd):
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    (cwd / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    return "model.safetensors"


def older_format(mod, cwd):
    old = mod.FORMAT.rsplit("-", 1)[0] + "-1"
    data = {"format": old, "args": "{}", "run_name": "x", "state": {}, "global_step": 10}
    (cwd / "old.ckpt").write_bytes(flax.serialization.msgpack_serialize(data))
    return "old.ckpt"


def corrupt_file(mod, cwd):
    (cwd / "corrupt.ckpt").write_bytes(b"\x00not a checkpoint")
    return "corrupt.ckpt"


RESUME_FLAGS = ["--env-id", "CartPole-v1", *TINY, "--total-timesteps", "200"]


def checkpoint_pair(mod, cwd, replay_step):
    """A checkpoint at global_step 100 of RESUME_FLAGS naming its replay file, which holds replay_step (None: absent)."""
    run = cwd / "runs" / "r"
    run.mkdir(parents=True)
    payload = {"run_name": "r", "state": {}, "global_step": 100, "key": np.zeros(2, np.uint32),
               "replay": "checkpoint.step100.replay.npz", "counters": "{}"}  # fmt: skip
    mod.save_file(str(run / "checkpoint.ckpt"), script_args(mod, RESUME_FLAGS), payload)
    if replay_step is not None:
        np.savez(run / "checkpoint.step100.replay.npz", global_step=replay_step)
    return "runs/r/checkpoint.ckpt"


def unwritable_cwd(mod, cwd):
    """Root ignores permission bits: there a file named `runs` makes the run directory impossible instead."""
    if os.geteuid() == 0:
        (cwd / "runs").write_text("")
    else:
        cwd.chmod(0o555)


BAD_INPUTS = [  # (id, flags, setup(mod, cwd) -> the path for {}, the text the one-line error must contain)
    ("unknown-env", ["--env-id", "NoSuchEnv-v0"], None, "NoSuchEnv-v0"),
    ("tuple-obs", ["--env-id", "Blackjack-v1"], None, "unsupported observation space Tuple"),
    ("dict-obs", ["--env-id", "cleanwm-test/DictObs-v0"], None, "unsupported observation space Dict"),
    ("image-30x30", ["--env-id", "cleanwm-test/Image30-v0"], None, "divisible by 16"),
    ("float-image-signed", ["--env-id", "cleanwm-test/FloatImageSigned-v0"], None, "must lie in [0, 1] or [0, 255]"),
    ("image-128-buffer-beyond-ram", ["--env-id", "cleanwm-test/Image128-v0", "--total-timesteps", "1000000000",
                                     "--buffer-size", "1000000000"], None, "GiB of RAM: pass --buffer-size"),
    ("batch-length-0", ["--env-id", "CartPole-v1", "--batch-length", "0"], None, "--batch-length"),
    ("batch-length-1", ["--env-id", "CartPole-v1", "--batch-length", "1"], None, "--batch-length"),
    ("model-size", ["--env-id", "CartPole-v1", "--model-size", "huge"], None, "--model-size"),
    ("num-devices-0", ["--env-id", "CartPole-v1", "--num-devices", "0"], None, "--num-devices must be >= 1"),
    ("batch-not-divisible-by-devices", ["--env-id", "CartPole-v1", "--batch-size", "3", "--num-devices", "2"], None,
     "--batch-size 3 (global) must be divisible by --num-devices 2"),
    ("more-devices-than-visible", ["--env-id", "CartPole-v1", "--batch-size", "1024", "--num-devices", "1024"], None,
     "--num-devices 1024 exceeds the"),
    ("total-below-learning-starts", ["--env-id", "CartPole-v1", "--total-timesteps", "300"], None,
     "--total-timesteps 300 is below --learning-starts 1088"),
    ("eval-episodes-0", ["--evaluate", "m.cleanrl_model", "--eval-episodes", "0"], None, "--eval-episodes"),
    ("cwd-not-writable", ["--env-id", "CartPole-v1"], unwritable_cwd, "cannot "),
    ("resume-missing", ["--env-id", "CartPole-v1", "--resume", "/nonexistent/ckpt"], None, "not found"),
    ("resume-final-model", ["--env-id", "CartPole-v1", "--resume", "{}"], final_model, "is a final model"),
    ("resume-other-jax-script", ["--env-id", "CartPole-v1", "--resume", "{}"], other_script_checkpoint, "was written by"),
    ("evaluate-other-jax-script", ["--evaluate", "{}"], other_script_checkpoint, "was written by"),
    ("resume-torch-file", ["--env-id", "CartPole-v1", "--resume", "{}"], torch_checkpoint, "is a PyTorch file"),
    ("evaluate-safetensors-file", ["--evaluate", "{}"], safetensors_file, "is a safetensors file"),
    ("resume-older-format", ["--env-id", "CartPole-v1", "--resume", "{}"], older_format, "older format"),
    ("resume-corrupt", ["--env-id", "CartPole-v1", "--resume", "{}"], corrupt_file, "is corrupt"),
    ("resume-replay-of-another-step", [*RESUME_FLAGS, "--resume", "{}"], lambda m, c: checkpoint_pair(m, c, 90),
     "not one checkpoint"),
    ("resume-replay-missing", [*RESUME_FLAGS, "--resume", "{}"], lambda m, c: checkpoint_pair(m, c, None),
     "--no-checkpoint-replay"),
]  # fmt: skip


@pytest.mark.parametrize("script", list(MODULES))
@pytest.mark.parametrize("flags,setup,needle", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_error_before_anything_is_created(script, flags, setup, needle, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = setup(MODULES[script], cwd) if setup else None
    before = tree(cwd)
    try:
        status, _, stderr = run_main(script, [f.replace("{}", path or "") for f in flags], cwd)
    finally:
        cwd.chmod(0o755)
    assert_one_line_error(status, stderr, needle)
    assert tree(cwd) == before  # no run folder, no events file, no video folder


@pytest.mark.parametrize("script", list(MODULES))
def test_bad_input_in_a_real_process(script, tmp_path):
    """The same as the table, once per script as a real process: a rejected env leaves nothing behind."""
    r = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--env-id", "Blackjack-v1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(r.returncode, r.stderr, "unsupported observation space Tuple")
    assert tree(tmp_path) == []


def test_float_images_in_0_1_are_stored_as_uint8():
    """Float image observations in [0, 1] are accepted: common.make_env converts them to uint8 round(255 x), the form the
    replay stores and the encoder divides by 255 (not divided by 255 twice, not cast to all zeros)."""
    raw = gym.make("cleanwm-test/FloatImage01-v0")
    env = common.make_env("cleanwm-test/FloatImage01-v0", 0, 0, False, "")()
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    x, _ = raw.reset(seed=3)
    y, _ = env.reset(seed=3)
    assert y.dtype == np.uint8 and np.array_equal(y, np.round(x * 255).astype(np.uint8)) and y.max() > 200
    wrapped = common.UInt8Images(raw).observation(np.array([[[0.0, 0.5, 1.0]]], np.float32))
    np.testing.assert_array_equal(wrapped, [[[0, 128, 255]]])
    for mod in MODULES.values():
        args = mod.check_args(mod.Args(env_id="CartPole-v1", model_size="debug"))
        agent = mod.Agent(args, env.observation_space, env.action_space)  # accepted
        assert agent.image and mod.Replay(40, 1, 9, env.observation_space, 2, 4, 3, 0).data["obs"].dtype == np.uint8
    assert not common.is_float01_image(image(16, np.float32, 0.0, 255.0))  # [0, 255] floats are used as they are


def test_checkpoint_code_is_the_same_in_both_scripts():
    """thick_dreamer_jax.py checkpoints, resumes and stops with the base's code, so the kill test of one covers both."""
    names = ["atomic_write", "check_writable", "what_file", "save_file", "load_file", "restore_tree", "config_diff",
             "Checkpoints", "writing_elsewhere", "check_memory", "Progress", "compile_note", "duration", "log_episodes",
             "save_and_evaluate", "env_spaces"]  # fmt: skip
    assert [n for n in names if inspect.getsource(getattr(D, n)) != inspect.getsource(getattr(T, n))] == []
    assert D.QUICK_START.replace("dreamerv3_jax", "thick_dreamer_jax") == T.QUICK_START


def test_second_signal_waits_for_the_write_and_a_second_ctrl_c_outside_it_stops_at_once(tmp_path, capfd):
    ckpt = D.Checkpoints(D.check_args(D.Args(env_id="CartPole-v1", model_size="debug")), "r")
    ckpt._on_signal(signal.SIGTERM, None)
    assert ckpt.stop == signal.SIGTERM
    ckpt._on_signal(signal.SIGTERM, None)  # a repeated SIGTERM never interrupts
    ckpt.writing = True
    ckpt._on_signal(signal.SIGINT, None)  # nor does a Ctrl-C while the checkpoint is written
    ckpt.writing = False
    with pytest.raises(D.Stopped, match="stopped at once by a second SIGINT; no checkpoint was written"):
        ckpt._on_signal(signal.SIGINT, None)
    assert "already stopping" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Real runs: SIGKILL at random instants, two SIGTERMs, a run directory that becomes read-only
# ---------------------------------------------------------------------------------------------------------------------


class Run:
    """A dreamerv3_jax.py run, forked by conftest.py's fork server (script_popen): a process of its own that SIGKILL and
    SIGTERM end as they end `python dreamerv3_jax.py`, without an interpreter start and JAX import per run."""

    def __init__(self, start, cwd, *flags):
        self.proc = start("dreamerv3_jax.py", flags, cwd)

    @property
    def out(self) -> list:
        return self.proc.out_lines()

    def wait_for(self, pattern, timeout=300):
        end = time.time() + timeout
        while time.time() < end:
            if any(re.search(pattern, line) for line in self.out):
                return
            assert self.proc.poll() is None, "".join(self.proc.read())
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}")

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, *self.proc.read()


def committed(run_dir: Path) -> dict:
    """The last committed checkpoint, read the way --resume reads it, checked for inner consistency."""
    saved = D.load_file(str(run_dir / "checkpoint.ckpt"), kind="checkpoint")
    step, updates = int(saved["global_step"]), int(saved["state"]["updates"])
    assert int(saved["state"]["opt_state"]["count"]) == updates  # the optimizer state belongs to these updates
    with np.load(run_dir / saved["replay"]) as f:
        assert int(f["global_step"]) == step and int(f["count"].sum()) == step  # the replay of that very step
        replay = int(np.minimum(f["count"], int(f["capacity"])).sum())
    prev, expected = None, 0  # the train-ratio schedule: updates due by `step` (ratio 16 / (2 * 8) = 1 per step)
    for s in range(24, step + 1):  # from learning starts, (2 + 1) * 8
        due, prev = D.updates_due(s, prev, 1.0)
        expected += due
    assert updates == expected, (updates, expected)
    return {"step": step, "updates": updates, "replay": replay}


def leftovers(run_dir: Path, named: str) -> set:
    return {p.name for p in run_dir.iterdir() if ".tmp" in p.name or (p.suffix == ".npz" and p.name != named)}


@pytest.mark.slow
def test_sigkill_at_random_instants_then_two_sigterms(tmp_path, script_popen):
    """10 SIGKILLs at random instants of a run that checkpoints every 4 steps (so some land inside a write); after each,
    the resumed run continues from the last committed pair with matching step, update, replay and optimizer counters,
    and the files an interrupted write left are gone once a run has started in that directory again. The last resume
    gets two SIGTERMs 50 ms apart: one checkpoint, exit status 143, no traceback, nothing left over."""
    flags = ["--env-id", "CartPole-v1", *TINY, "--total-timesteps", "100000", "--checkpoint-every", "4", "--log-every",
             "2", "--seed", "5"]  # fmt: skip
    rng, lost, left_behind, stale = random.Random(0), [], 0, set()
    run = Run(script_popen, tmp_path, *flags)
    run.wait_for(r"^checkpoint written")
    run_dir = next((tmp_path / "runs").iterdir())
    for _ in range(10):
        time.sleep(rng.uniform(0.0, 1.5))
        run.proc.kill()
        _, out, _ = run.finish()
        reached = max(int(s) for s in re.findall(r"(?:^step |global_step=)(\d+)", out, re.M))
        last = committed(run_dir)
        lost.append(reached - last["step"])
        assert not stale & {p.name for p in run_dir.iterdir()}  # what the previous kill left was deleted
        stale = leftovers(run_dir, f"checkpoint.step{last['step']}.replay.npz")
        left_behind += bool(stale)
        run = Run(script_popen, tmp_path, *flags, "--resume", str(run_dir / "checkpoint.ckpt"))
        run.wait_for(r"^checkpoint written")
        assert f"at global_step={last['step']}, updates={last['updates']}, replay={last['replay']}\n" in "".join(run.out)
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    status, _, err = run.finish()
    assert status == 128 + signal.SIGTERM and "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    step = int(re.search(r"^stopped by SIGTERM at global_step=(\d+); checkpoint written to", err, re.M).group(1))
    assert committed(run_dir)["step"] == step and not leftovers(run_dir, f"checkpoint.step{step}.replay.npz")
    print(f"kills 10, resumes 10, steps lost per kill {lost} (mean {np.mean(lost):.1f}, max {max(lost)}), "
          f"kills that left unfinished files {left_behind}")  # fmt: skip


READ_ONLY_CASES = [(["--checkpoint-every", "8"], "^checkpoint written"), (["--log-every", "2"], "^step ")]


@pytest.mark.slow
@pytest.mark.parametrize("flags,first_line", READ_ONLY_CASES, ids=["checkpoint", "tensorboard"])
def test_run_directory_turning_read_only_is_a_one_line_error(tmp_path, flags, first_line, script_popen):
    """The next checkpoint write (or, without checkpoints, the TensorBoard writer) fails: one line, no traceback."""
    run = Run(script_popen, tmp_path, "--env-id", "CartPole-v1", *TINY, "--total-timesteps", "100000", *flags)
    run.wait_for(first_line)
    run_dir = next((tmp_path / "runs").iterdir())
    if os.geteuid() == 0:  # root ignores permission bits: the directory is replaced by a file instead
        run_dir.rename(tmp_path / "moved")
        run_dir.write_text("")
    else:
        run_dir.chmod(0o555)
    try:
        status, _, err = run.finish()
    finally:
        if run_dir.is_dir():
            run_dir.chmod(0o755)
    assert_one_line_error(status, err, "")  # from the checkpoint write or the TensorBoard writer, whichever comes first
    assert re.search(r"cannot write .*; the last checkpoint is runs/|(Not a directory|Permission denied): .*runs/", err), err
