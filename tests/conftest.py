"""Test-session settings. XLA's CPU backend spends most of a tiny model's test time compiling; these flags cut the
compile time about 3x (they only lower LLVM optimisation; results are unchanged). They are set before JAX starts and
are inherited by the subprocess smoke runs, as is a persistent compilation cache shared by those runs.

`script_run` / `script_popen`: the smoke runs of the JAX scripts as forked processes. A fork server (one Python process
per test session that has imported the scripts' dependencies but has not started JAX) forks a child per run; the
child sets its environment, enters the run's directory and executes the script as `__main__`, as `python <script>.py`
would, without paying an interpreter start and the imports of JAX, Flax, torch's TensorBoard writer and gymnasium per
run. The child is a process of its own (SIGTERM, SIGKILL and exit statuses as for a real run); its stdout and stderr go
to files that the test reads. Tests that are about a real interpreter start (tests/test_reliability.py's real-process
row) still use subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# The fork server (runs in its own process: `python tests/conftest.py --fork-server`)
# ---------------------------------------------------------------------------------------------------------------------


def _serve():
    """Requests on stdin, one JSON line each; answers on stdout, one JSON line each.
    {"run": [path, *argv], "cwd", "out", "err", "env"} -> {"pid"}; {"wait": pid, "block": bool} -> {"status"} (None while
    it runs; -N when signal N ended it, as subprocess reports it). The server is single-threaded and never starts JAX, so
    that its forks are safe."""
    import runpy

    sys.path.insert(0, str(ROOT))
    from jax._src import xla_bridge
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    import dreamerv3_jax  # noqa: F401  (their imports: jax, flax, optax, gymnasium, tyro, common)
    import thick_dreamer_jax  # noqa: F401

    assert not xla_bridge._backends, "the fork server must not start JAX (a fork of a started JAX is unsafe)"
    reply = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        if "run" in req:
            pid = os.fork()
            if pid == 0:  # the child: from here on the run, which ends as `python <script>.py` ends (atexit included)
                os.environ.update(req["env"])
                os.chdir(req["cwd"])
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                for fd, path in ((1, req["out"]), (2, req["err"])):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
                sys.argv = list(req["run"])
                runpy.run_path(sys.argv[0], run_name="__main__")
                sys.exit(0)
            answer = {"pid": pid}
        else:
            done, status = os.waitpid(req["wait"], 0 if req["block"] else os.WNOHANG)
            if done == 0:
                answer = {"status": None}
            else:
                answer = {"status": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


# ---------------------------------------------------------------------------------------------------------------------
# The client side: a Popen-like handle and a subprocess.run-like call
# ---------------------------------------------------------------------------------------------------------------------


class ForkServer:
    def __init__(self):
        self.logs = Path(tempfile.mkdtemp(prefix="forked-runs-"))  # the runs' stdout and stderr files
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, __file__, "--fork-server"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT)

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server ended"
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.logs, ignore_errors=True)


class ForkedRun:
    """`subprocess.Popen([python, script, *argv], cwd=cwd)` as a child of the fork server: pid, send_signal, kill, poll,
    wait, returncode; stdout and stderr in files (out_lines / read)."""

    def __init__(self, server: ForkServer, script, argv, cwd, env=None):
        self.server, name = server, f"run{time.time_ns()}"
        self.out_path, self.err_path = (server.logs / f"{name}.{s}" for s in ("out", "err"))
        self.out_path.touch(), self.err_path.touch()  # readable before the child has opened them
        files = {"out": str(self.out_path), "err": str(self.err_path)}
        req = {"run": [str(ROOT / script), *map(str, argv)], "cwd": str(cwd), "env": env or {}} | files
        self.pid, self.returncode = server.ask(req)["pid"], None

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def poll(self):
        if self.returncode is None:
            self.returncode = self.server.ask({"wait": self.pid, "block": False})["status"]
        return self.returncode

    def wait(self, timeout=600):
        end = time.time() + timeout
        while self.poll() is None:
            if time.time() > end:
                self.kill()
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode

    def read(self):
        """(stdout, stderr) so far; the files are removed once the run has ended and they are read."""
        out, err = self.out_path.read_text(), self.err_path.read_text()
        if self.returncode is not None:
            self.out_path.unlink(missing_ok=True)
            self.err_path.unlink(missing_ok=True)
        return out, err

    def out_lines(self):
        return self.out_path.read_text().splitlines(keepends=True)


@pytest.fixture(scope="session")
def fork_server():
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture
def script_popen(fork_server):
    """script_popen(script, argv, cwd, env=None) -> a ForkedRun (killed at the end of the test if still running)."""
    runs = []

    def start(script, argv, cwd, env=None):
        runs.append(ForkedRun(fork_server, script, argv, cwd, env))
        return runs[-1]

    yield start
    for run in runs:
        if run.poll() is None:
            run.kill()
            run.wait()


@pytest.fixture
def script_run(script_popen):
    """script_run(script, argv, cwd, env=None, timeout=600) -> subprocess.CompletedProcess, as subprocess.run with
    capture_output=True, text=True."""

    def run(script, argv, cwd, env=None, timeout=600):
        proc = script_popen(script, argv, cwd, env)
        proc.wait(timeout)
        out, err = proc.read()
        return subprocess.CompletedProcess([script, *argv], proc.returncode, out, err)

    return run


if __name__ == "__main__" and sys.argv[1:] == ["--fork-server"]:
    _serve()
