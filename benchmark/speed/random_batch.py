"""One replay batch of random Crafter-shaped data (64x64x3 uint8 images, 17 actions) for timing a train step; the
update cost does not depend on the values. Shared by the benchmark scripts that time or trace dreamerv3_jax.py and
thick_dreamer_jax.py (THICK's stored context is added when the agent has one)."""

import numpy as np


def crafter_batch(agent, batch_size: int, batch_length: int, seed: int = 0) -> dict:
    """Arrays of shape (B, T+1, ...) as Replay.sample returns them; step 0 of every window starts an episode."""
    B, T = batch_size, batch_length + 1
    rng = np.random.default_rng(seed)
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    batch = {"obs": rng.integers(0, 255, (B, T, 64, 64, 3), dtype=np.uint8),
             "action": np.eye(17, dtype=np.float32)[rng.integers(0, 17, (B, T))],
             "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": first,
             "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool),
             "deter": np.zeros((B, T, agent.deter), np.float16), "stoch": np.zeros((B, T, agent.stoch), np.uint8)}  # fmt: skip
    if hasattr(agent, "ctx"):  # THICK: the stored context
        batch["context"] = np.zeros((B, T, agent.ctx), np.float32)
    return batch
