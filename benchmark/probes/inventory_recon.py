"""Does the world model of a Crafter run see the inventory? (the pixels that show an achievement being unlocked)

    python benchmark/probes/inventory_recon.py runs/<run>/checkpoint.ckpt [--windows 256] [--last 20000] [--png out.png]

Needs a checkpoint written with its replay (`checkpoint.ckpt.replay.npz`). Crafter's 64 x 64 image is a 9 x 7 grid of
7-pixel tiles of the world (rows 0-48) above two rows of inventory tiles (rows 49-62). Most rewards of Crafter are
achievements, and an unlock shows as a new inventory item, so a reward head can only learn them if the latent state
carries the inventory. For replayed windows it decodes the posterior (the model's own latent for each observation) and
reports, per image region, the squared error per pixel, and at the steps where an achievement was unlocked (r >= 1) how
much the inventory changed from the step before in the data (d_obs) and in the reconstruction (d_recon): a model that
encodes the unlock gives d_recon ~ d_obs, one that does not gives d_recon << d_obs. `flat` is the error of predicting
each pixel by its mean over the sample, the trivial baseline. `--png` writes data | reconstruction pairs of the first 8
windows at 4 time steps. dreamerv3_jax.py and thick_dreamer_jax.py checkpoints.
"""

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from imagined_reward import newest_windows  # noqa: E402  (benchmark/probes/imagined_reward.py)
from saved_agent import load_agent  # noqa: E402  (benchmark/probes/saved_agent.py)

WORLD, INVENTORY = slice(0, 49), slice(49, 63)  # pixel rows of Crafter's local view and of its inventory


@functools.partial(jax.jit, static_argnums=(0, 1))
def _recon(agent, thick, params, obs, action, first, deter, stoch, context, key):
    """Posterior reconstruction of obs[:, 1:] from the stored latents of step 0: (N, T, 64, 64, 3) in [0, 1]."""
    p = params
    embed = agent.enc.apply({"params": p["enc"]}, obs[:, 1:])
    h0, z0 = deter[:, 0].astype(jnp.float32), jax.nn.one_hot(stoch[:, 0], agent.classes)
    if thick:  # thick_dreamer_jax.py: C-RSSM with the context c; the fine decoder sees (h, z, c)
        h, z, _, out = agent.observe(p, h0, z0, context[:, 0].astype(jnp.float32), embed, action[:, :-1], first[:, 1:], key)
        return agent.dec.apply({"params": p["dec"]}, h, z, out["c"])
    h, z, _ = agent.observe(p, h0, z0, embed, action[:, :-1], first[:, 1:], key)
    return agent.dec.apply({"params": p["dec"]}, h, z)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--windows", type=int, default=256, help="replay windows of batch-length + 1 steps")
    ap.add_argument("--chunk", type=int, default=32, help="windows per compiled call (memory)")
    ap.add_argument("--last", type=int, default=20000, help="sample windows from the newest N steps of each env")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="", help="also write data | reconstruction pairs to this PNG")
    a = ap.parse_args()
    mod, agent, params, args = load_agent(a.checkpoint)
    thick = mod.__name__ == "thick_dreamer_jax"
    batch = newest_windows(a.checkpoint, a.windows, args.batch_length + 1, a.last, a.seed)
    recons = []
    for i in range(0, a.windows, a.chunk):
        part = {k: jnp.asarray(v[i : i + a.chunk]) for k, v in batch.items()}
        inputs = [part.get(k) for k in ("obs", "action", "is_first", "deter", "stoch", "context")]  # context: THICK only
        recons.append(np.asarray(_recon(agent, thick, params, *inputs, jax.random.PRNGKey(a.seed))))
    rec = np.concatenate(recons)  # (N, T, 64, 64, 3)
    obs = batch["obs"][:, 1:].astype(np.float32) / 255.0
    err = (rec - obs) ** 2
    flat = (obs - obs.mean((0, 1), keepdims=True)) ** 2
    out = {"checkpoint": a.checkpoint, "windows": a.windows, "last": a.last}
    for name, rows in (("world", WORLD), ("inventory", INVENTORY)):
        out[f"mse_{name}"] = round(float(err[:, :, rows].mean()), 5)
        out[f"flat_{name}"] = round(float(flat[:, :, rows].mean()), 5)
    # the inventory change from step t-1 to t, in the data and in the reconstruction, at unlock steps and elsewhere
    d_obs = np.abs(obs[:, 1:, INVENTORY] - obs[:, :-1, INVENTORY]).mean((-3, -2, -1))  # (N, T-1)
    d_rec = np.abs(rec[:, 1:, INVENTORY] - rec[:, :-1, INVENTORY]).mean((-3, -2, -1))
    same_ep = ~batch["is_first"][:, 2:]  # t-1 and t in the same episode
    unlock = same_ep & (batch["reward"][:, 2:] >= 0.99)
    changed = same_ep & ~unlock & (d_obs > 1e-3)  # other inventory changes (items used, health/food bars)
    for name, sel in (("unlock", unlock), ("other_change", changed)):
        out[f"n_{name}"] = int(sel.sum())
        if sel.any():
            out[f"d_obs_{name}"] = round(float(d_obs[sel].mean()), 5)
            out[f"d_recon_{name}"] = round(float(d_rec[sel].mean()), 5)
            out[f"mse_inventory_{name}"] = round(float(err[:, 1:][sel][:, INVENTORY].mean()), 5)
    print(json.dumps(out))
    if a.png:  # rows: windows; columns: (data, reconstruction) at 4 steps of the window
        from PIL import Image

        steps = np.linspace(2, obs.shape[1] - 1, 4).astype(int)
        pair = lambda i, t: np.concatenate([batch["obs"][i, 1 + t], (rec[i, t] * 255).round().astype(np.uint8)], 1)
        grid = np.concatenate([np.concatenate([pair(i, t) for t in steps], 1) for i in range(min(8, len(rec)))], 0)
        Image.fromarray(grid).resize((2 * grid.shape[1], 2 * grid.shape[0]), Image.NEAREST).save(a.png)


if __name__ == "__main__":
    main()
