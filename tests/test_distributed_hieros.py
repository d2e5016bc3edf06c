"""Data parallel hieros_s5_torch.py on the CPU (torch.distributed with gloo): the gradients averaged over 2 processes
equal the single-process gradients of the concatenated batch, the processes stay identical, and a real 2-process
torchrun run trains, checkpoints (one replay file per process), stops on a signal that reached one process only, and
resumes.

Run: python -m pytest tests/test_distributed_hieros.py -q
The 2-process worker of the gradient test is this file run as a script: python tests/test_distributed_hieros.py RANK DIR
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
TINY = ["--model-size", "debug", "--batch-size", "2", "--batch-length", "8", "--train-ratio", "16", "--imag-horizon", "3",
        "--max-hierarchy", "2", "--subactor-update-every", "2", "--env-id", "CartPole-v1"]  # fmt: skip
SCRIPT = str(ROOT / "hieros_s5_torch.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT]
B, T = 4, 6  # the global batch of the gradient test: each of the 2 processes takes B / 2 sequences


def make_agent(H, **kw):
    """A 2-level debug agent without dropout (the gradients are then a function of the batch alone)."""
    args = H.Args(model_size="debug", max_hierarchy=2, imag_horizon=3, dropout=0.0, batch_size=B, batch_length=T, **kw)
    return H.Agent(gym.spaces.Box(-1, 1, (5,), np.float32), gym.spaces.Discrete(3), args), args


def global_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.rand(B, T, generator=g) < 0.2
    action, code = torch.randint(0, 3, (B, T), generator=g), torch.randint(0, 8, (B, T, 8), generator=g)
    return dict(obs=torch.randn(B, T, 5, generator=g), action=torch.eye(3)[action], reward=torch.randn(B, T, generator=g),
                is_first=first, is_terminal=first & (torch.rand(B, T, generator=g) < 0.5),
                subgoal=torch.randn(B, T, 16, generator=g), code=torch.eye(8)[code].flatten(2))  # fmt: skip


def half(batch, rank):
    return {k: v[rank * B // 2 : (rank + 1) * B // 2] for k, v in batch.items()}


def world_model_step(H, batch):
    """One world-model-only train_level of level 0 (--behavior-starts beyond it): its gradients (averaged and clipped as
    the script does), the global gradient norm it logs, the parameters after the step. The posterior latents are taken
    at their mode (with the same straight-through gradient), so that the loss is a function of the batch alone: sampled,
    the B / 2 rows of a process would see other noise than the same rows of the single process."""
    sampler = H.onehot_straight_through
    H.onehot_straight_through = lambda probs, sample=True: sampler(probs, False)
    try:
        return _world_model_step(H, batch)
    finally:
        H.onehot_straight_through = sampler


def _world_model_step(H, batch):
    torch.manual_seed(0)
    agent, args = make_agent(H, behavior_starts=10**9)
    lv = agent.levels[0]
    opts, sched = H.make_optimizers(lv, args)
    m = H.train_level(lv, opts, sched, batch, args, H.wm_loss, contextlib.nullcontext)
    grads = {n: p.grad.clone() for n, p in lv.wm.named_parameters() if p.grad is not None}
    return grads, m["grad_norm"], {n: p.detach().clone() for n, p in lv.wm.named_parameters()}


RETURNS = torch.randn(4, 10, generator=torch.Generator().manual_seed(1)) * 5  # (K, N): process r updates on N/2 columns


def worker(rank: int, out: Path):
    """One of 2 processes: WORLD_SIZE=2 and RANK are in its environment before hieros_s5_torch is imported, as torchrun
    sets them; the rendezvous is a file in `out`."""
    import torch.distributed as dist

    import hieros_s5_torch as H

    assert (H.WORLD, H.RANK) == (2, rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    res = {}
    # 1. the world-model step on this process's half of the global batch
    res["grads"], res["grad_norm"], res["wm_after"] = world_model_step(H, half(global_batch(), rank))
    # 2. the return percentiles of the global batch
    norm = H.ReturnNorm()
    norm.update(RETURNS[:, rank * 5 : (rank + 1) * 5])
    res["retnorm"] = torch.stack([norm.low, norm.high])
    # 3. the agreed decisions
    res["min"] = H.all_ranks([rank == 0, 3 + rank], dist.ReduceOp.MIN)
    res["max"] = H.all_ranks([rank == 0, 3 + rank], dist.ReduceOp.MAX)
    # 4. different inits made equal by broadcast_state, then full updates of both levels (world model, actor, critics,
    #    autoencoder) of level 0 on different batches with different sampling noise: the processes stay identical
    torch.manual_seed(10 + rank)
    agent, args = make_agent(H)
    H.broadcast_state(agent)
    res["init"] = {k: v.clone() for k, v in agent.state_dict().items() if torch.is_tensor(v)}
    lv = agent.levels[0]  # (level 0 of 2: extrinsic and subgoal critics, and the autoencoder: all 4 optimizers)
    opts, sched = H.make_optimizers(lv, args)
    for call in range(2):
        torch.manual_seed(100 * rank + call)
        H.train_level(lv, opts, sched, half(global_batch(1 + call), rank), args, H.wm_loss, contextlib.nullcontext)
    res["trained"] = {k: v.clone() for k, v in agent.state_dict().items() if torch.is_tensor(v)}
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_average_to_the_single_process_gradient_of_the_global_batch(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, __file__, str(r), str(tmp_path)], env=dict(ENV, WORLD_SIZE="2", RANK=str(r),
                         LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    import hieros_s5_torch as H  # this process: WORLD = 1, the single-process code path

    assert H.WORLD == 1
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    grads, grad_norm, wm_after = world_model_step(H, global_batch())  # the whole global batch in one process
    for res in ranks:
        assert res["grads"].keys() == grads.keys() and len(grads) > 10
        for n, g in grads.items():  # float32: the two halves' means averaged vs one mean
            torch.testing.assert_close(res["grads"][n], g, rtol=1e-4, atol=1e-6, msg=n)
        torch.testing.assert_close(res["grad_norm"], grad_norm, rtol=1e-5, atol=0)  # the norm of the global gradient
        for n, p in wm_after.items():
            torch.testing.assert_close(res["wm_after"][n], p, rtol=1e-4, atol=1e-6, msg=n)
    norm = H.ReturnNorm()
    norm.update(RETURNS)
    for res in ranks:
        torch.testing.assert_close(res["retnorm"], torch.stack([norm.low, norm.high]))
        assert res["min"] == [False, 3] and res["max"] == [True, 4]
    for key in ("init", "trained"):  # bit-identical processes: the same init, and the same parameters after the updates
        assert ranks[0][key].keys() == ranks[1][key].keys()
        assert all(torch.equal(ranks[0][key][k], ranks[1][key][k]) for k in ranks[0][key]), key
    assert any(not torch.equal(ranks[0]["init"][k], ranks[0]["trained"][k]) for k in ranks[0]["init"] if ".actor." in k)


def test_global_batch_must_split_evenly(monkeypatch):
    import hieros_s5_torch as H

    monkeypatch.setattr(H, "WORLD", 2)
    with pytest.raises(H.UsageError, match="--batch-size 3 .the global batch. must be divisible by the 2 processes"):
        H.check_args(H.Args(env_id="CartPole-v1", model_size="debug", batch_size=3))
    args = H.check_args(H.Args(env_id="CartPole-v1", model_size="debug", batch_size=4, total_timesteps=1000))
    assert H.replay_capacity(args) == 500 + 1  # each process writes half of the steps
    monkeypatch.setattr(H, "WORLD", 1)
    assert H.replay_capacity(args) == 1000 + 1


def torchrun(cwd, *flags, timeout=300):
    return subprocess.run([*TORCHRUN, *TINY, *flags], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_processes_train_checkpoint_and_resume(tmp_path):
    proc = torchrun(tmp_path, "--total-timesteps", "64", "--checkpoint-every", "32", "--log-every", "32")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("step 64/64 ") == 1  # progress from rank 0 only
    (run,) = tmp_path.glob("runs/*")
    npz = sorted(p.name for p in run.glob("*.npz"))
    assert npz == ["checkpoint.step64.rank1.replay.npz", "checkpoint.step64.replay.npz"]  # the step-32 pair deleted
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # TensorBoard from rank 0 only
    import hieros_s5_torch as H

    state = H.load_file(str(run / "checkpoint.ckpt"), kind="checkpoint")
    assert state["global_step"] == 64 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # seeds offset by rank
    for name in ("checkpoint.step64.replay.npz", "checkpoint.step64.rank1.replay.npz"):
        with np.load(run / name) as f:  # each process stepped its own env for half of the 64 steps
            assert int(f["global_step"]) == 64 and f["L0_count"].sum() == 32
    updates = state["agent"]["levels.0._extra_state"]["updates"]
    assert updates >= 64 - 16  # train ratio 16 with the global batch 2 x 8: one level-0 update per global step after 16

    # a single process cannot resume it (one replay file and RNG state per process)
    args = H.check_args(H.Args(**{**state["args"], "total_timesteps": 96, "resume": str(run / "checkpoint.ckpt")}))
    with pytest.raises(H.UsageError, match="written by a run of 2 process.es.: resume it with 2, not 1"):
        H.Checkpoints.read(args)

    proc = torchrun(tmp_path, "--total-timesteps", "96", "--checkpoint-every", "32", "--resume", f"{run}/checkpoint.ckpt")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "global_step=64" in proc.stdout and "step 96/96 " in proc.stdout
    state = H.load_file(str(run / "checkpoint.ckpt"), kind="checkpoint")
    assert state["global_step"] == 96 and state["agent"]["levels.0._extra_state"]["updates"] >= updates + 32
    npz = sorted(p.name for p in run.glob("*.npz"))  # the older pair deleted after the commit
    assert npz == ["checkpoint.step96.rank1.replay.npz", "checkpoint.step96.replay.npz"]


def worker_pids(parent: int) -> dict:
    """{RANK: pid} of the processes torchrun (the agent with pid `parent`) started."""
    found = {}
    deadline = time.time() + 60
    while len(found) < 2 and time.time() < deadline:
        for task in Path(f"/proc/{parent}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    rank = [e for e in env if e.startswith(b"RANK=")]
                    if rank:
                        found[int(rank[0][5:])] = int(pid)
        time.sleep(0.2)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="finds the workers through /proc")
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    proc = subprocess.Popen([*TORCHRUN, *TINY, "--total-timesteps", "100000", "--log-every", "16"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in proc.stdout:  # rank 0's progress: both are training
            if line.startswith("step ") and "updates 0 " not in line:
                break
        ranks = worker_pids(proc.pid)
        assert sorted(ranks) == [0, 1], (ranks, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it through the agreed stop
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a failed assertion above: end the run (torchrun passes SIGTERM on to its workers)
            proc.terminate()
            proc.communicate(timeout=120)
    workers = err.split("torch/distributed/elastic/")[0]  # then torchrun's own report of the workers' exit status 143
    assert "Traceback" not in workers and workers.count("SIGTERM: finishing this step") == 1, err[-3000:]
    stops = re.findall(r"stopped by SIGTERM at global_step=(\d+); checkpoint written to (\S+)", workers)
    assert len(stops) == 2 and stops[0] == stops[1], workers  # both processes, at the same step
    step, ckpt = stops[0]
    run = tmp_path / Path(ckpt).parent
    names = sorted(p.name for p in run.glob("*.npz"))
    assert names == [f"checkpoint.step{step}.rank1.replay.npz", f"checkpoint.step{step}.replay.npz"], names
    import hieros_s5_torch as H

    assert H.load_file(str(tmp_path / ckpt), kind="checkpoint")["global_step"] == int(step)


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))
