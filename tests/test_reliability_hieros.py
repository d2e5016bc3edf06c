"""Reliability of hieros_s5_torch.py: every bad input is a one-line `error: ...` with exit status 2 before anything is
created; a checkpoint and its replay file form one unit that a SIGKILL at any instant cannot split; stop signals end
without a traceback; files of the JAX scripts, of an older format or of unknown contents are refused by name, and none
is unpickled with anything but torch's weights-only unpickler.

The bad-input table runs the script's real `__main__` block in this process (runpy, argv patched): the same code path
as `python hieros_s5_torch.py ...` without paying an interpreter and a torch import per row. One row also runs as a
real subprocess."""

import contextlib
import io
import os
import random
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro

import common
import hieros_s5_torch as H

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "hieros_s5_torch"
TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "16", "--imag-horizon", "3",
        "--max-hierarchy", "2", "--subactor-update-every", "2"]  # fmt: skip
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


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
    "FloatImage255": image(16, np.float32, 0.0, 255.0),
    "FloatImageSigned": image(16, np.float32, -1.0, 1.0),
    "DictObs": gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (3,), np.float32)}),
}
for _name, _space in SPACES.items():
    if f"cleanwm-test-hieros/{_name}-v0" not in gym.registry:
        gym.register(f"cleanwm-test-hieros/{_name}-v0", entry_point=SpaceEnv, kwargs={"space": _space})


# ---------------------------------------------------------------------------------------------------------------------
# Running the script's __main__ block in this process
# ---------------------------------------------------------------------------------------------------------------------


def run_main(argv: list, cwd: Path) -> tuple:
    """`python hieros_s5_torch.py argv` in this process: (exit status, stdout, stderr). Warnings go to stderr as with
    Python's default filters, so a row that warns fails the one-line check as it would in a real run."""
    old_cwd, old_argv, threads = os.getcwd(), sys.argv, torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    os.chdir(cwd)
    sys.argv = [f"{SCRIPT}.py", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as seen:
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.filterwarnings("ignore", module="gymnasium")  # the env checker's remarks on an env (pyproject.toml too)
            try:
                runpy.run_path(str(ROOT / f"{SCRIPT}.py"), run_name="__main__")
                status = 0
            except SystemExit as e:
                status = e.code
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        torch.set_num_threads(threads)
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


def script_args(argv):
    return H.check_args(tyro.cli(H.Args, args=argv))


def final_model(cwd):
    H.save_file(str(cwd / "m.cleanrl_model"), script_args(["--env-id", "CartPole-v1"]), {"agent": {}})
    return "m.cleanrl_model"


def version_1_checkpoint(cwd):
    """A checkpoint as this script wrote it before its files had a version: a full pickle with numpy arrays inside."""
    state = {"kind": "checkpoint", "args": {"env_id": "CartPole-v1"}, "run_name": "x", "agent": {"w": torch.zeros(2)},
             "replays": [{"count": np.zeros(1, np.int64)}], "rng": {"numpy": np.random.get_state()}, "global_step": 10,
             "n_train_calls": 0, "n_updates": 0, "credit": 0.0}  # fmt: skip
    torch.save(state, cwd / "checkpoint.pt")
    return "checkpoint.pt"


def version_1_model(cwd):
    """A final model as this script wrote it before its files had a version (only tensors: weights_only reads it)."""
    torch.save({"kind": "model", "args": {"env_id": "CartPole-v1"}, "agent": {"w": torch.zeros(2)}}, cwd / "old.pt")
    return "old.pt"


def older_version(cwd):
    torch.save({"format": H.FORMAT.rsplit("-", 1)[0] + "-1", "kind": "checkpoint"}, cwd / "older.ckpt")
    return "older.ckpt"


class MakesAFile:
    """A pickle that runs code when it is unpickled (here: creates the file `ran`)."""

    def __reduce__(self):
        return (open, ("ran", "w"))


def pickle_that_runs_code(cwd):
    torch.save({"args": {}, "payload": MakesAFile()}, cwd / "evil.ckpt")
    return "evil.ckpt"


def replay_file(cwd):
    np.savez(cwd / "checkpoint.step8.replay.npz", global_step=8)
    return "checkpoint.step8.replay.npz"


def safetensors_file(cwd):
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    (cwd / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    return "model.safetensors"


def corrupt_file(cwd):
    (cwd / "corrupt.ckpt").write_bytes(b"\x00not a checkpoint")
    return "corrupt.ckpt"


RESUME_FLAGS = ["--env-id", "CartPole-v1", *TINY, "--total-timesteps", "200"]


def checkpoint_pair(cwd, replay_step, step=100):
    """A checkpoint at global_step `step` of RESUME_FLAGS naming its replay file, which holds replay_step (None: absent)."""
    run = cwd / "runs" / "r"
    run.mkdir(parents=True)
    payload = {"run_name": "r", "agent": {}, "optims": [], "global_step": step, "rng": {},
               "replay": f"checkpoint.step{step}.replay.npz", "counters": {}}  # fmt: skip
    H.save_file(str(run / "checkpoint.ckpt"), script_args(RESUME_FLAGS), payload)
    if replay_step is not None:
        np.savez(run / f"checkpoint.step{step}.replay.npz", global_step=replay_step)
    return "runs/r/checkpoint.ckpt"


def unwritable_cwd(cwd):
    """Root ignores permission bits: there a file named `runs` makes the run directory impossible instead."""
    if os.geteuid() == 0:
        (cwd / "runs").write_text("")
    else:
        cwd.chmod(0o555)


BAD_INPUTS = [  # (id, flags, setup(cwd) -> the path for {}, the text the one-line error must contain)
    ("unknown-env", ["--env-id", "NoSuchEnv-v0"], None, "NoSuchEnv-v0"),
    ("tuple-obs", ["--env-id", "Blackjack-v1"], None, "unsupported observation space Tuple"),
    ("dict-obs", ["--env-id", "cleanwm-test-hieros/DictObs-v0"], None, "unsupported observation space Dict"),
    ("image-30x30", ["--env-id", "cleanwm-test-hieros/Image30-v0"], None, "divisible by 16"),
    ("float-image-signed", ["--env-id", "cleanwm-test-hieros/FloatImageSigned-v0"], None, "must lie in [0, 1] or [0, 255]"),
    ("image-128-buffer-beyond-ram", ["--env-id", "cleanwm-test-hieros/Image128-v0", "--model-size", "debug",
                                     "--total-timesteps", "1000000000", "--buffer-size", "1000000000"], None,
     "GiB of RAM: pass --buffer-size"),
    ("batch-length-0", ["--env-id", "CartPole-v1", "--batch-length", "0"], None, "--batch-length must be >= 2"),
    ("batch-length-1", ["--env-id", "CartPole-v1", "--batch-length", "1"], None, "--batch-length must be >= 2"),
    ("batch-size-0", ["--env-id", "CartPole-v1", "--batch-size", "0"], None, "--batch-size must be >= 1"),
    ("buffer-below-batch-length", ["--env-id", "CartPole-v1", "--buffer-size", "32"], None, "fewer than --batch-length 64"),
    ("model-size", ["--env-id", "CartPole-v1", "--model-size", "huge"], None, "--model-size"),
    ("total-timesteps-0", ["--env-id", "CartPole-v1", "--total-timesteps", "0"], None, "--total-timesteps must be >= 1"),
    ("total-below-learning-starts", ["--env-id", "CartPole-v1", "--total-timesteps", "300"], None,
     "--total-timesteps 300 is below --learning-starts 1024"),
    ("no-update-at-this-train-ratio", ["--env-id", "CartPole-v1", "--batch-size", "16", "--batch-length", "32",
                                       "--train-ratio", "256", "--total-timesteps", "512"], None,
     "raise --total-timesteps to at least 513"),
    ("eval-episodes-0", ["--evaluate", "m.cleanrl_model", "--eval-episodes", "0"], None, "--eval-episodes"),
    ("cwd-not-writable", ["--env-id", "CartPole-v1", *TINY], unwritable_cwd, "cannot "),
    ("resume-missing", ["--env-id", "CartPole-v1", "--resume", "/nonexistent/ckpt"], None, "not found"),
    ("resume-final-model", ["--env-id", "CartPole-v1", "--resume", "{}"], final_model, "is a final model"),
    ("resume-version-1-checkpoint", ["--env-id", "CartPole-v1", "--resume", "{}"], version_1_checkpoint,
     "has the older format of hieros_s5_torch.py files without a version"),
    ("evaluate-version-1-model", ["--evaluate", "{}"], version_1_model, "has the older format"),
    ("resume-older-version", ["--env-id", "CartPole-v1", "--resume", "{}"], older_version,
     "has the older format cleanwm-hieros_s5_torch-1"),
    ("evaluate-pickle-that-runs-code", ["--evaluate", "{}"], pickle_that_runs_code, "is a PyTorch file of other contents"),
    ("resume-replay-file", ["--env-id", "CartPole-v1", "--resume", "{}"], replay_file, "is a replay file"),
    ("evaluate-safetensors-file", ["--evaluate", "{}"], safetensors_file, "is a safetensors file"),
    ("resume-corrupt", ["--env-id", "CartPole-v1", "--resume", "{}"], corrupt_file, "is corrupt"),
    ("evaluate-corrupt", ["--evaluate", "{}"], corrupt_file, "is corrupt"),
    ("evaluate-on-another-env", ["--env-id", "Acrobot-v1", "--evaluate", "{}"], final_model,
     "was trained on --env-id CartPole-v1, not Acrobot-v1"),
    ("resume-other-flags", ["--env-id", "CartPole-v1", *TINY, "--total-timesteps", "200", "--max-hierarchy", "3",
                            "--resume", "{}"], lambda c: checkpoint_pair(c, 100), "other flags: max_hierarchy=2 (now 3)"),
    ("resume-at-the-end", [*RESUME_FLAGS, "--resume", "{}"], lambda c: checkpoint_pair(c, 200, 200),
     "pass a larger --total-timesteps"),
    ("resume-replay-of-another-step", [*RESUME_FLAGS, "--resume", "{}"], lambda c: checkpoint_pair(c, 90),
     "not one checkpoint"),
    ("resume-replay-missing", [*RESUME_FLAGS, "--resume", "{}"], lambda c: checkpoint_pair(c, None),
     "--no-checkpoint-replay"),
]  # fmt: skip


@pytest.mark.parametrize("flags,setup,needle", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_error_before_anything_is_created(flags, setup, needle, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = setup(cwd) if setup else None
    before = tree(cwd)
    try:
        status, _, stderr = run_main([f.replace("{}", path or "") for f in flags], cwd)
    finally:
        cwd.chmod(0o755)
    assert_one_line_error(status, stderr, needle)
    assert tree(cwd) == before  # no run folder, no events file, no video folder; nothing unpickled ran (no `ran`)


def test_bad_input_in_a_real_process(tmp_path):
    """The same as the table, once as a real process: a rejected env leaves nothing behind."""
    r = subprocess.run([sys.executable, str(ROOT / f"{SCRIPT}.py"), "--env-id", "Blackjack-v1"], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(r.returncode, r.stderr, "unsupported observation space Tuple")
    assert tree(tmp_path) == []


def test_checkpoints_of_the_jax_scripts_are_refused_by_name(tmp_path):
    """A checkpoint or final model of dreamerv3_jax.py or thick_dreamer_jax.py (msgpack, written by their own code)."""
    import dreamerv3_jax
    import thick_dreamer_jax

    for mod in (dreamerv3_jax, thick_dreamer_jax):
        args = mod.check_args(tyro.cli(mod.Args, args=["--env-id", "CartPole-v1"]))
        mod.save_file(str(tmp_path / "checkpoint.ckpt"), args, {"state": {}})
        mod.save_file(str(tmp_path / "m.cleanrl_model"), args, {"params": {}})
        for flags in (["--env-id", "CartPole-v1", "--resume", "checkpoint.ckpt"], ["--evaluate", "m.cleanrl_model"]):
            status, _, stderr = run_main(flags, tmp_path)
            assert_one_line_error(status, stderr, f"was written by {mod.__name__}.py, not hieros_s5_torch.py")


def test_updates_possible_and_replay_capacity_values():
    """The update count of main()'s credit schedule in a fresh run, and the run-length cap of the replay."""
    args = H.Args(env_id="CartPole-v1", batch_size=16, batch_length=32, train_ratio=256, learning_starts=512)
    for total, updates in ((512, 0), (513, 1), (514, 1), (515, 2), (1000, 244)):  # 0.5 updates per step from step 512
        args.total_timesteps = total
        assert H.updates_possible(args) == (updates, 513)
    args.num_envs, args.total_timesteps = 4, 512  # steps 512 (the step that reaches it) and on: 2 updates per iteration
    assert H.updates_possible(args) == (2, 512)
    args.learning_starts = 510  # global_step runs 4, 8, ..., 512: the first iteration at or past 510 ends at 512
    assert H.updates_possible(args)[0] == 2
    args = H.check_args(H.Args(env_id="CartPole-v1", model_size="debug"))  # default buffer 1M, 100k steps
    assert H.replay_capacity(args) == 100_001
    spec = {"obs": ((128, 128, 3), np.uint8), "is_first": ((), bool)}
    replay = H.SequenceReplay(args.buffer_size, 1, 64, spec, args, 0, allocate=100)
    assert replay.cap == 100 and replay.capacity == 1_000_000  # ETBS's M (--etbs-max-len capacity) stays the capacity


def test_float_images_in_0_1_are_stored_as_uint8_and_0_255_as_float():
    """Float image observations in [0, 1] are accepted: common.make_env converts them to uint8 round(255 x), which the
    replay stores and the encoder divides by 255. Float images in [0, 255] are stored as float32 (not truncated)."""
    raw = gym.make("cleanwm-test-hieros/FloatImage01-v0")
    env = common.make_env("cleanwm-test-hieros/FloatImage01-v0", 0, 0, False, "")()
    x, _ = raw.reset(seed=3)
    y, _ = env.reset(seed=3)
    assert y.dtype == np.uint8 and np.array_equal(y, np.round(x * 255).astype(np.uint8)) and y.max() > 200
    args = H.Args(model_size="debug", max_hierarchy=1)
    agent = H.Agent(env.observation_space, env.action_space, args)
    assert H.replay_spec(agent.levels[0], env.observation_space)["obs"] == ((16, 16, 3), np.uint8)
    float255 = SPACES["FloatImage255"]
    agent = H.Agent(float255, env.action_space, args)
    assert H.replay_spec(agent.levels[0], float255)["obs"] == ((16, 16, 3), np.float32)


def test_second_signal_waits_for_the_write_and_a_second_ctrl_c_outside_it_stops_at_once(capfd):
    ckpt = H.Checkpoints(H.check_args(H.Args(env_id="CartPole-v1", model_size="debug")), "r")
    ckpt._on_signal(signal.SIGTERM, None)
    assert ckpt.stop == signal.SIGTERM
    ckpt._on_signal(signal.SIGTERM, None)  # a repeated SIGTERM never interrupts
    ckpt.writing = True
    ckpt._on_signal(signal.SIGINT, None)  # nor does a Ctrl-C while the checkpoint is written
    ckpt.writing = False
    with pytest.raises(H.Stopped, match="stopped at once by a second SIGINT; no checkpoint was written"):
        ckpt._on_signal(signal.SIGINT, None)
    assert "already stopping" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Real runs: SIGKILL at random instants, two SIGTERMs, a run directory that becomes read-only
# ---------------------------------------------------------------------------------------------------------------------


class Forked:
    """Popen's poll / wait / kill / send_signal / returncode for hieros_s5_torch.py's `__main__` block run in a child
    forked from this process: a real process that a SIGKILL ends at any instant, started without paying for an
    interpreter and a torch import. (The child ends with os._exit, so Python's shutdown, atexit included, is not part of
    what it tests; the real process of Run(..., fork=False) is.)"""

    def __init__(self, cwd, flags):
        import torch._dynamo  # noqa: F401  (torch's first optimizer imports it: seconds, paid here once, not per child)

        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        self.pid, self.returncode = os.fork(), None
        if self.pid == 0:  # the child: runs the script, never returns into pytest
            status = 1
            try:
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                for fd in (out_r, out_w, err_r, err_w):
                    os.close(fd)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                for s in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(s, signal.SIG_DFL)
                os.chdir(cwd)
                sys.argv = [f"{SCRIPT}.py", *flags]
                runpy.run_path(str(ROOT / f"{SCRIPT}.py"), run_name="__main__")
                status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
        os.close(out_w)
        os.close(err_w)
        self.stdout, self.stderr = open(out_r), open(err_r)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        end = time.time() + (timeout or 1e9)
        while self.poll() is None:
            if time.time() > end:
                raise subprocess.TimeoutExpired(SCRIPT, timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class Run:
    """A hieros_s5_torch.py process (forked from this one, or a new interpreter) whose stdout and stderr lines are
    collected by threads."""

    def __init__(self, cwd, *flags, fork=True):
        if fork:
            self.proc = Forked(cwd, flags)
        else:
            cmd = [sys.executable, str(ROOT / f"{SCRIPT}.py"), *flags]
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        self.threads = [threading.Thread(target=lambda s, acc: acc.extend(s), args=a) for a in
                        ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]  # fmt: skip
        for t in self.threads:
            t.start()

    def wait_for(self, pattern, timeout=300):
        end = time.time() + timeout
        while time.time() < end:
            if any(re.search(pattern, line) for line in self.out):
                return
            assert self.proc.poll() is None, "".join(self.out[-20:] + self.err[-20:])
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}")

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        for t in self.threads:
            t.join()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, "".join(self.out), "".join(self.err)


def committed(run_dir: Path) -> dict:
    """The last committed checkpoint, read the way --resume reads it, checked for inner consistency: its replay file holds
    the same step, every level's optimizers and warm-up schedule hold that level's update count, and the counters follow
    the train-ratio schedule (learning starts at 2 x 8 = 16 steps, then one train call per step; level 0 trains on each)."""
    saved = H.load_file(str(run_dir / "checkpoint.ckpt"), kind="checkpoint")
    step, counters = int(saved["global_step"]), saved["counters"]
    updates = [int(saved["agent"][f"levels.{i}._extra_state"]["updates"]) for i in range(2)]
    for i, opt in enumerate(saved["optims"]):
        wm_steps = {int(s["step"]) for s in opt["wm"]["state"].values()} or {0}
        actor_steps = {int(s["step"]) for s in opt["actor"]["state"].values()} or {0}
        assert wm_steps == actor_steps == {updates[i]} and opt["sched"]["last_epoch"] == updates[i], (i, wm_steps, updates)
    calls = max(0, step - 15)
    assert counters["n_train_calls"] == calls and updates[0] == calls and counters["credit"] == 0.0, (step, counters, updates)
    with np.load(run_dir / saved["replay"]) as f:
        assert int(f["global_step"]) == step and int(f["L0_count"].sum()) == step  # the replays of that very step
        assert 0 < int(f["L1_count"].sum()) <= step
    return {"step": step, "updates": updates[0], "replay": step}  # (no wrap: the replay holds every step)


def leftovers(run_dir: Path, named: str) -> set:
    """Files an interrupted write left: temporaries, replay files that the committed checkpoint does not name. Each as
    (name, inode, mtime): a resumed run may write a file of the same name anew (it reaches that step again)."""
    found = [p for p in run_dir.iterdir() if ".tmp" in p.name or (p.suffix == ".npz" and p.name != named)]
    return {(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in found}


@pytest.mark.slow
def test_sigkill_at_random_instants_then_two_sigterms(tmp_path):
    """10 SIGKILLs at random instants of a run that checkpoints every 4 steps (so some land inside a write); after each,
    the resumed run continues from the last committed pair with matching step, update, replay and optimizer counters,
    and the files an interrupted write left are gone once a run has started in that directory again. The last resume
    gets two SIGTERMs 50 ms apart: one checkpoint, exit status 143, no traceback, nothing left over; a run resumed from
    that checkpoint continues from its step. The killed runs and the final resume are forked from this process (Forked);
    the run that gets the SIGTERMs is a new interpreter, so its shutdown is tested too."""
    base = ["--env-id", "CartPole-v1", *TINY, "--checkpoint-every", "4", "--log-every", "2", "--seed", "5"]
    flags = [*base, "--total-timesteps", "100000"]
    rng, lost, left_behind, stale, t0 = random.Random(0), [], 0, set(), time.time()
    run = Run(tmp_path, *flags)
    run.wait_for(r"^checkpoint written")
    run_dir = next((tmp_path / "runs").iterdir())
    for _ in range(10):
        time.sleep(rng.uniform(0.0, 0.5))  # 4 steps (a checkpoint interval) take ~0.2 s here: 0.5 s spans 2-3 intervals
        run.proc.kill()
        _, out, _ = run.finish()
        reached = max(int(s) for s in re.findall(r"(?:^step |global_step=)(\d+)", out, re.M))
        last = committed(run_dir)
        lost.append(reached - last["step"])
        now = {(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.iterdir()}
        assert not stale & now  # what the previous kill left was deleted
        stale = leftovers(run_dir, f"checkpoint.step{last['step']}.replay.npz")
        left_behind += bool(stale)
        run = Run(tmp_path, *flags, "--resume", str(run_dir / "checkpoint.ckpt"), fork=len(lost) < 10)
        run.wait_for(r"^checkpoint written")
        assert f"at global_step={last['step']}, updates={last['updates']}, replay={last['replay']}\n" in "".join(run.out)
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    status, _, err = run.finish()
    assert status == 128 + signal.SIGTERM and "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    step = int(re.search(r"stopped by SIGTERM at global_step=(\d+); checkpoint written to", err).group(1))
    assert committed(run_dir)["step"] == step and not leftovers(run_dir, f"checkpoint.step{step}.replay.npz")
    run = Run(tmp_path, *base, "--total-timesteps", str(step + 8), "--resume", str(run_dir / "checkpoint.ckpt"))
    status, out, err = run.finish()
    assert status == 0 and f"at global_step={step}, " in out and f"step {step + 8}/{step + 8} " in out, err[-3000:]
    print(f"kills 10, resumes 10, steps lost per kill {lost} (mean {np.mean(lost):.1f}, max {max(lost)}), "
          f"kills that left unfinished files {left_behind}, {time.time() - t0:.0f} s")  # fmt: skip


@pytest.mark.slow
def test_run_directory_turning_read_only_is_a_one_line_error(tmp_path):
    run = Run(tmp_path, "--env-id", "CartPole-v1", *TINY, "--total-timesteps", "100000", "--checkpoint-every", "8")
    run.wait_for(r"^checkpoint written")
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
    assert_one_line_error(status, err, "cannot write")
    assert "the last checkpoint is runs/" in err
