"""How fast can the image encoder/decoder of a model-size preset learn Crafter frames on their own? (a capacity probe)

    python benchmark/probes/autoencoder_probe.py runs/<run>/checkpoint.ckpt.replay.npz --depth 4 --updates 2500 --batch 64

Trains dreamerv3_jax.py's Encoder and Decoder (CNN depth `--depth`: 4 = the `1m` and `debug` presets, 16 = `12m`) as
a plain autoencoder on the frames of a stored Crafter replay: encoder -> Linear(512) -> decoder (its stoch input held
at zero), the image loss of the world model (squared error summed over pixels), the script's LaProp optimizer with
AGC 0.3 and the 1000-update warm-up. No RSSM, no KL, no sampling: the most these convolutions can do in that many
updates. The last 2000 frames are held out; every 250 updates it prints (and appends to --out as JSON) the held-out
squared error per pixel on the world rows (0-48) and the inventory rows (49-62) of 512 of them, next to the error of
a constant image (the per-pixel mean of the training frames). Compare with benchmark/probes/inventory_recon.py on the
world model that wrote the replay.
"""

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from imagined_reward import load_replay  # benchmark/probes/imagined_reward.py (this script's folder)
from inventory_recon import INVENTORY, WORLD  # benchmark/probes/inventory_recon.py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
import dreamerv3_jax as d  # noqa: E402


class AutoEncoder(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):  # (N, 64, 64, 3) uint8 -> (N, 64, 64, 3) in [0, 1]
        h = d.Linear(512)(d.Encoder(self.depth, 64, True)(x))
        return d.Decoder(self.depth, 64, (64, 64, 3), True)(h, jnp.zeros((*h.shape[:-1], 32, 4)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("replay", help="a checkpoint.ckpt.replay.npz of a Crafter run")
    ap.add_argument("--depth", type=int, default=4, help="CNN depth (1m/debug: 4, 12m: 16)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--updates", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=64, help="frames per update")
    ap.add_argument("--out", default="", help="append one JSON line per evaluation to this file")
    a = ap.parse_args()
    data, count, pos, cap = load_replay(a.replay)
    held = np.minimum(count, cap)
    frames = np.concatenate([data["obs"][e, : held[e]] for e in range(len(held))])  # (F, 64, 64, 3) uint8
    train, test = frames[:-2000], frames[-2000:][:512]
    flat = (test / 255.0 - (train[::10] / 255.0).mean(0)) ** 2  # a constant image: the per-pixel training mean
    model = AutoEncoder(a.depth)
    params = model.init(jax.random.PRNGKey(0), train[:2])["params"]
    opt = d.laprop(a.lr, 1e-20, 0.3, 1000)
    opt_state = opt.init(params)

    def loss_fn(p, x):  # L_img = sum over pixels of (dec - o/255)^2, averaged over frames
        return jnp.sum((model.apply({"params": p}, x) - x.astype(jnp.float32) / 255.0) ** 2, (-3, -2, -1)).mean()

    @jax.jit
    def train_step(p, s, x):
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        u, s = opt.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s, loss

    @jax.jit
    def held_out(p, x):
        err = (model.apply({"params": p}, x) - x.astype(jnp.float32) / 255.0) ** 2
        return err[:, WORLD].mean(), err[:, INVENTORY].mean()

    rng, t0 = np.random.default_rng(0), time.time()
    for i in range(1, a.updates + 1):
        params, opt_state, loss = train_step(params, opt_state, train[rng.integers(0, len(train), a.batch)])
        if i % 250 == 0:
            world, inventory = held_out(params, test)
            row = {"replay": a.replay, "depth": a.depth, "lr": a.lr, "batch": a.batch, "update": i,
                   "seconds": round(time.time() - t0), "loss_per_frame": round(float(loss), 1),
                   "mse_world": round(float(world), 5), "mse_inventory": round(float(inventory), 5),
                   "flat_world": round(float(flat[:, WORLD].mean()), 5),
                   "flat_inventory": round(float(flat[:, INVENTORY].mean()), 5)}  # fmt: skip
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
