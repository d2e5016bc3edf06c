"""Load a saved Crafter agent of dreamerv3_jax.py or thick_dreamer_jax.py (a `.cleanrl_model` or `checkpoint.ckpt`) for
the benchmark scripts that act with it (thick_alignment.py, action_freq.py)."""

import dataclasses
import importlib

import gymnasium as gym
import jax
import numpy as np


def load_agent(path: str, scripts=("thick_dreamer_jax", "dreamerv3_jax")):
    """(module, agent, params, args) of the first script in `scripts` whose checkpoint format the file has."""
    for i, name in enumerate(scripts):
        mod = importlib.import_module(name)
        try:
            saved = mod.load_file(path)  # each script reads only its own format
            break
        except mod.UsageError as e:
            if i == len(scripts) - 1:
                raise SystemExit(f"error: {e}") from None
    args = mod.Args(**{k: v for k, v in saved["args"].items() if k in {f.name for f in dataclasses.fields(mod.Args)}})
    agent = mod.Agent(args, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(17))
    tree = saved["params"] if "params" in saved else saved["state"]["params"]
    params = mod.restore_tree(agent.init(jax.random.PRNGKey(0)).params, tree, path, "params")
    return mod, agent, params, args
