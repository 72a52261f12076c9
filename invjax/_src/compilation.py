"""`jit`: `jax.jit` with the XLA:CPU convolution library chosen from the cores per device.

The XLA:CPU of recent jaxlibs hands every convolution to the YNNPACK library by default
(the library-fusion list `xla_cpu_experimental_ynn_fusion_type` defaults to individual
convolutions). YNNPACK runs each convolution on one thread; XLA's own (Eigen) convolution
kernels use all the threads of the device. When a computation's device has several cores
to itself (JAX's default on a CPU: one device for the whole machine), `jit` compiles with
that list set to individual dots only, so convolutions go back to XLA's kernels (dense
layers stay on YNNPACK). When its arguments are split over several CPU devices, e.g. one
per core (`invjax.parallel.cpu_cores_as_devices` + `call_sharded`), each device has one
core and YNNPACK, faster per core, is kept. Results agree with the default compilation to
float rounding (~1e-6 relative); the speed-ups are in docs/results/attacks.md
(`bench/attacks.py`, `bench/pgd_profile.py`).

The option is passed per compilation (`jax.jit(..., compiler_options=...)`), never through
the process-wide `XLA_FLAGS`, and only when the default backend is the CPU. A jaxlib that
does not know the option is detected once (by compiling a tiny function) and gets plain
`jax.jit`. Set the environment variable `INVJAX_CPU_LIBRARY_FUSION=0` to turn it off.

`jit` takes the arguments of `jax.jit` and builds the jitted function on first use (so
importing invjax initialises no backend). JAX accepts compiler options only on a top-level
jit; called from inside another trace (your own `jax.jit`, `grad`, `vmap`) an invjax
function runs as a plain nested `jax.jit` and your compilation decides: wrap your own
top-level function in `invjax._src.compilation.jit` to get the options.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from invjax import parallel

ENV_VAR = "INVJAX_CPU_LIBRARY_FUSION"
# Replaces the default list (individual convolutions) by individual dots.
CPU_LIBRARY_FUSION = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _cpu_fusion_supported() -> bool:
  """Whether this jaxlib's CPU compiler accepts `CPU_LIBRARY_FUSION` (compiles a 2x2 dot)."""
  try:
    fn = jax.jit(lambda a: a @ a, compiler_options=CPU_LIBRARY_FUSION)
    jax.block_until_ready(fn(jnp.ones((2, 2), jnp.float32)))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def compiler_options(num_devices: int = 1) -> Dict[str, Any]:
  """The options `jit` adds for a call whose arguments span `num_devices` devices.

  `CPU_LIBRARY_FUSION` when the default backend is a CPU whose compiler accepts it and
  each of the devices has at least two cores (`parallel.available_cores() // num_devices
  >= 2`): multi-threaded XLA convolutions beat single-threaded YNNPACK there. Otherwise
  (one core per device, another backend, or `INVJAX_CPU_LIBRARY_FUSION=0`) {}.
  """
  if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
    return {}
  if jax.default_backend() != "cpu" or not _cpu_fusion_supported():
    return {}
  if parallel.available_cores() // max(1, int(num_devices)) < 2:
    return {}
  return dict(CPU_LIBRARY_FUSION)


def _num_devices(tree) -> int:
  """The largest number of devices an array of `tree` is placed on (1 for host values)."""
  n = 1
  for leaf in jax.tree_util.tree_leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      n = max(n, len(sharding.device_set))
  return n


def _has_tracer(tree) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


class _LazyJit:
  """`jax.jit(fun)` with `compiler_options()` added, built at first use.

  JAX accepts `compiler_options` only on a top-level jit: called with traced arguments
  (inside another `jax.jit`, `grad`, `vmap`, ...) the plain `jax.jit(fun)` is used, and
  the outer compilation decides.
  """

  def __init__(self, fun: Callable, jit_kwargs: Dict[str, Any]):
    self._fun = fun
    self._jit_kwargs = jit_kwargs
    self._plain = None
    self._by_devices: Dict[int, Callable] = {}  # devices spanned -> jitted function
    functools.update_wrapper(self, fun)

  def _pick(self, args, kwargs):
    if self._plain is None:
      self._plain = jax.jit(self._fun, **self._jit_kwargs)
    if _has_tracer((args, kwargs)):
      return self._plain
    n = _num_devices((args, kwargs))
    if n not in self._by_devices:
      options = compiler_options(n)
      self._by_devices[n] = (jax.jit(self._fun, compiler_options=options, **self._jit_kwargs)
                             if options else self._plain)
    return self._by_devices[n]

  def __call__(self, *args, **kwargs):
    fn = self._pick(args, kwargs)
    if fn is self._plain:
      return fn(*args, **kwargs)
    try:
      return fn(*args, **kwargs)
    except ValueError as e:  # traced through a closure rather than the arguments
      if "compiler_options" not in str(e):
        raise
      return self._plain(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._pick(args, kwargs).lower(*args, **kwargs)

  def trace(self, *args, **kwargs):
    return self._pick(args, kwargs).trace(*args, **kwargs)

  def eval_shape(self, *args, **kwargs):
    return self._plain_jit().eval_shape(*args, **kwargs)

  def _plain_jit(self):
    if self._plain is None:
      self._plain = jax.jit(self._fun, **self._jit_kwargs)
    return self._plain


def jit(fun: Optional[Callable] = None, **jit_kwargs):
  """`jax.jit(fun, **jit_kwargs)` with `compiler_options()` (see the module docstring).

  Usable as `jit(f, static_argnames=...)`, `@jit` or
  `@functools.partial(jit, static_argnames=...)`.
  """
  if fun is None:
    return functools.partial(jit, **jit_kwargs)
  return _LazyJit(fun, jit_kwargs)
