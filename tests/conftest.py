"""Test-wide settings: CPU only, deterministic, quiet, and compiled quickly.

Most of the suite's time is XLA:CPU compiling small programs, not running them. Two settings,
both inherited by the xdist workers and by the notebook kernels and launch subprocesses the tests
start (they read the environment):

- `--xla_backend_optimization_level=2`: XLA:CPU's default (3) spends about 4x longer in LLVM on
  each fused kernel (7.9 s vs 1.7 s for a SmallCNN's `init`) for faster element-wise code (PGD-20
  in bench/attacks.py: 1.35x Foolbox at level 3, 1.19x at level 2); the
  convolutions and matrix products are library calls either way. Values stay within the
  tolerances every test checks; benchmarks (bench/) and launch scripts keep the default.
  Level 0 would compile faster still but sums float32 reductions differently enough that the
  Newton SVM solver stops at its float32 floor above a tight tol (residual 1.2e-4 vs 1e-4).
- One on-disk compilation cache for the run: the launch tests, the notebooks and the library
  tests build the same networks, training steps and attacks, and compile each once. It is fresh
  for every run and removed at its end, so a run never reads programs compiled by an older
  checkout. Set INVJAX_TEST_JAX_CACHE_DIR=/some/dir to keep one across runs (it is then left in
  place), or to "off" to compile everything in every test.

An XLA_FLAGS already set in the environment is left alone.
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=2")

_CACHE_ENV = "INVJAX_TEST_JAX_CACHE_DIR"
_OWNED_CACHE = None
if _CACHE_ENV not in os.environ:  # the xdist controller (or a plain run); its workers inherit it
  _OWNED_CACHE = os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="invjax-test-jax-cache-")
if os.environ[_CACHE_ENV] != "off":
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  # a size limit turns on JAX's file lock, so that two workers never read a half-written entry
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)


def pytest_unconfigure(config):
  del config
  if _OWNED_CACHE is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
    shutil.rmtree(_OWNED_CACHE, ignore_errors=True)
