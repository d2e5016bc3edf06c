"""RMS gradient per parameter group, read from the LaProp state of a dreamerv3_jax.py / thick_dreamer_jax.py checkpoint.

    python benchmark/grad_rms.py runs/<run>/checkpoint.ckpt

LaProp keeps nu, the EMA of g^2 per parameter; sqrt(nu / (1 - 0.999^n)) is the RMS of recent (AGC-clipped) gradients.
Printed per group: percentiles and the fraction below 1e-5, which tells what an optimizer epsilon of that size would
damp (the step is g / (rms + eps), so parameters whose rms is far below eps move at a fraction of the learning rate).
"""

import argparse

import flax
import numpy as np


def main(path: str):
    with open(path, "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())["state"]
    n = int(state["opt_state"]["count"])
    print(f"{path}: {n} updates")
    for group, sub in state["opt_state"]["nu"].items():
        leaves = flax.traverse_util.flatten_dict(sub).values()
        rms = np.concatenate([np.sqrt(np.asarray(v, np.float64) / (1 - 0.999**n)).ravel() for v in leaves])
        p10, p50, p90 = np.percentile(rms, [10, 50, 90])
        print(f"  {group:8s} {rms.size:7d} params  rms p10 {p10:.1e}  p50 {p50:.1e}  p90 {p90:.1e}  "
              f"below 1e-5: {np.mean(rms < 1e-5):.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint.ckpt of dreamerv3_jax.py or thick_dreamer_jax.py")
    main(ap.parse_args().checkpoint)
