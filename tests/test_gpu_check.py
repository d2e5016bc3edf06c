"""benchmark/gpu_check.sh: its helpers (values) and the whole check with --dry-run (every part on the CPU, tiny sizes)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark", "speed"))
import gpu_probe  # noqa: E402  (benchmark/speed/gpu_probe.py: the parts of gpu_check.sh)

SCRIPTS = ["dreamerv3_jax.py", "thick_dreamer_jax.py", "hieros_s5_torch.py"]


def test_steady_rates_from_progress_lines():
    # (arrival second, line): prefill lines (updates 0) and other output are left out of the window
    lines = [
        (1.0, "device: cpu (cpu)"),
        (2.0, "step 100/1000 | SPS 100.0 | updates 0 | ETA - | loss -"),
        (30.0, "step 200/1000 | SPS 6.9 | updates 1 | ETA - | loss 3.2"),  # the first line after the first update
        (40.0, "global_step=230, episodic_return=1.10"),
        (50.0, "step 300/1000 | SPS 6.1 | updates 51 | episodes 1 | ETA 0h02m"),  # HIEROS's line shape
        (70.0, "step 400/1000 | SPS 5.7 | updates 101 | ETA 0h02m | loss 3.0 | change rate 0.100"),  # THICK's
    ]
    r = gpu_probe.steady_rates(lines)
    # window from t=30 (step 200, update 1) to t=70 (step 400, update 101): 200 steps and 100 updates in 40 s
    assert r["sps"] == 5.0 and r["ups"] == 2.5 and r["window_s"] == 40.0 and r["window_steps"] == 200
    assert r["window_updates"] == 100 and r["first_update_line_s"] == 30.0
    assert r["progress_lines"] == 4 and r["steps"] == 400 and r["updates"] == 101 and r["sps_script"] == 5.7
    # fewer than two lines after the first update: no steady rate, the script's own SPS still reported
    r = gpu_probe.steady_rates(lines[:3])
    assert r["sps"] is None and r["ups"] is None and r["sps_script"] == 6.9 and r["window_s"] == 0.0
    assert gpu_probe.steady_rates([])["steps"] == 0


def test_multi_device_plan_detects_never_assumes():
    helps = {s: "usage: ... --num-devices INT ..." for s in SCRIPTS[:2]}
    dist_src = "torch.distributed.init_process_group(backend)"
    plan = gpu_probe.multi_device_plan
    # one GPU: never a multi-device flag, whatever the scripts support
    assert plan(1, helps, 1, True, dist_src) == dict.fromkeys(SCRIPTS, 1)
    # several GPUs and support detected: N devices for every script
    assert plan(4, helps, 4, True, dist_src) == dict.fromkeys(SCRIPTS, 4)
    # several GPUs but no --num-devices in a script's --help / no torch.distributed / a script that does not use it
    one_flag = {SCRIPTS[0]: helps[SCRIPTS[0]], SCRIPTS[1]: "usage: ..."}
    assert list(plan(2, one_flag, 2, True, dist_src).values()) == [2, 1, 2]
    assert plan(2, helps, 2, False, dist_src)[SCRIPTS[2]] == 1
    assert plan(2, helps, 2, True, "import torch")[SCRIPTS[2]] == 1


def test_env_cli_is_the_scripts_default_at_the_update_parts_sizes():
    sizes, plan = gpu_probe.SIZES[False], dict.fromkeys(SCRIPTS, 1)
    cli = gpu_probe.env_cli("dreamerv3_jax.py", plan, sizes, dry=False)
    assert " ".join(cli) == (
        "--env-id crafter --model-size 12m --batch-size 16 --batch-length 64 --log-every 100 --total-timesteps 100000"
    )  # no --train-ratio: the script's default (Crafter 512); no --num-devices on one device
    two = gpu_probe.env_cli("thick_dreamer_jax.py", {**plan, "thick_dreamer_jax.py": 2}, sizes, False)
    assert " ".join(two).endswith("--log-every 100 --num-devices 2 --total-timesteps 100000")
    # HIEROS: progress lines every 20 policy steps through whichever flag the script has
    old = gpu_probe.env_cli("hieros_s5_torch.py", plan, sizes, False, "    progress_every: int = 1000")
    new = gpu_probe.env_cli("hieros_s5_torch.py", plan, sizes, False, "    log_every: int = 1000")
    assert " ".join(old).endswith("--max-hierarchy 3 --progress-every 20 --total-timesteps 100000")
    assert " ".join(new).endswith("--max-hierarchy 3 --log-every 20 --total-timesteps 100000")
    assert "--model-size paper --batch-size 16 --batch-length 64" in " ".join(new)
    dry = " ".join(gpu_probe.env_cli("dreamerv3_jax.py", plan, gpu_probe.SIZES[True], dry=True))
    assert dry.endswith("--batch-size 2 --batch-length 8 --log-every 4 --total-timesteps 32 --train-ratio 8")


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """The whole check on the CPU: every part runs and the JSON and the table hold each script's figures (the env run of
    thick_dreamer_jax.py left out: it repeats dreamerv3_jax.py's code path and flags)."""
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", os.path.join(ROOT, "benchmark", "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["budget_s"] == 1200 and report["wall_s"] > 0
    assert [p["status"] for p in report["parts"]] == ["ok"] * 6, report["parts"]
    assert [p["part"].split()[0] for p in report["parts"]] == ["info", *["jax-update"] * 2, "torch-update", *["env-run"] * 2]
    assert report["skipped"] == ["env-run thick_dreamer_jax.py"] and report["details"][SCRIPTS[1]]["env"] is None
    assert report["info"]["jax"]["platform"] == "cpu" and report["info"]["torch"]["cuda"] is False
    assert report["plan"] == dict.fromkeys(SCRIPTS, 1)  # no GPU: one device, no torchrun
    assert [r["script"] for r in report["rows"]] == SCRIPTS
    for r in report["rows"]:
        assert r["batch"] == "2x8" and r["num_devices"] == 1 and r["peak_mem_gib"] is None  # no GPU memory on a CPU
        assert r["update_s"] > 0 and r["policy_step_ms"] > 0 and r["params"] > 0
        if r["script"] != SCRIPTS[1]:
            # --train-ratio 8 at batch 2 x 8: one update every 2 env steps, over the window of progress lines (every 4 steps)
            assert r["env_sps"] > 0 and r["train_ratio"] == 8.0, r
    hieros = report["details"]["hieros_s5_torch.py"]["update"]
    assert len(hieros["update_s_per_level"]) == 3 and hieros["train_call_s"] > hieros["update_s"]
    for s in SCRIPTS[:2]:
        assert report["details"][s]["update"]["compile_s"] > 0
    envs = [report["details"][s]["env"] for s in (SCRIPTS[0], SCRIPTS[2])]
    assert all(e["returncode"] == 0 and e["steps"] == 32 and e["window_steps"] >= 8 for e in envs), envs
    # the table: the device named, a header and one row per script; also written to gpu_check.md and printed
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.strip() == report["table"].strip() and report["table"] in out.stdout
    assert "--dry-run" in md and "JAX " in md and "torch " in md and "on cpu" in md
    assert "| script | size | batch | devices | s / update | policy step ms | env SPS |" in md
    assert "- part env-run thick_dreamer_jax.py: left out by --dry-run" in md
    for s in SCRIPTS:
        assert sum(line.startswith(f"| {s} |") for line in md.splitlines()) == 1
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
