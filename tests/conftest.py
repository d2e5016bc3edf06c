"""Test-session settings. XLA's CPU backend spends most of a tiny model's test time compiling; these flags cut the
compile time about 3x (they only lower LLVM optimisation; results are unchanged). They are set before JAX starts and
are inherited by the subprocess smoke runs, as is a persistent compilation cache shared by those runs."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
