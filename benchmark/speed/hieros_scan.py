"""Parallel resettable S5 scan (Hillis-Steele, log2 T vectorised rounds) vs a step-by-step Python loop over T steps.

Times the forward and forward+backward of one S5 layer and of the paper's 4-block double-S5 stack at B x T = 16 x 64,
H = 256, P = 128 (the paper's world-model pass), with 5 % random resets. Checks both give the same output.
    python benchmark/speed/hieros_scan.py            # appends to benchmark/results/hieros_scan.json
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
import hieros_s5_torch as h  # noqa: E402


def loop_forward(mod, u, reset, state_shape):
    state, ys = torch.zeros(u.shape[0], *state_shape, dtype=torch.complex64), []
    for t in range(u.shape[1]):
        mask = reset[:, t].reshape(-1, *[1] * len(state_shape))
        state = torch.where(mask, torch.zeros_like(state), state)
        y, state = mod.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def bench(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    torch.manual_seed(0)
    b, t, hdim, p = 16, 64, 256, 128
    u = torch.randn(b, t, hdim)
    reset = torch.rand(b, t) < 0.05
    reset[:, 0] = True
    results = {"B": b, "T": t, "H": hdim, "P": p, "threads": torch.get_num_threads(), "torch": torch.__version__}
    mods = {"ssm": (h.S5SSM(hdim, p, 4), (p,)), "stack4": (h.S5Stack(hdim, p, 4, 4, 0.0).eval(), (4, 2 * p))}
    for name, (mod, shape) in mods.items():
        par = lambda m=mod: m(u, reset)[0]
        seq = lambda m=mod, s=shape: loop_forward(m, u, reset, s)
        err = (par() - seq()).abs().max().item()
        uu = u.clone().requires_grad_(True)

        def par_bwd(m=mod):
            m(uu, reset)[0].sum().backward()

        def seq_bwd(m=mod, s=shape):
            loop_forward(m, uu, reset, s).sum().backward()

        with torch.no_grad():
            f_par, f_seq = bench(par, 5), bench(seq, 5)
        fb_par, fb_seq = bench(par_bwd, 5), bench(seq_bwd, 5)
        results[name] = dict(max_abs_diff=err, forward_parallel_ms=f_par * 1e3, forward_loop_ms=f_seq * 1e3,
                             fwd_bwd_parallel_ms=fb_par * 1e3, fwd_bwd_loop_ms=fb_seq * 1e3,
                             speedup_forward=f_seq / f_par, speedup_fwd_bwd=fb_seq / fb_par)  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
    out = "benchmark/results/hieros_scan.json"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
