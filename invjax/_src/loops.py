"""Bounded loops that stay fast on XLA:CPU: a `lax` loop on accelerators, unrolled on CPU.

XLA:CPU runs the input gradient of a `lax` convolution inside `while` / `cond` bodies
several times slower than in straight-line code (why: `invjax._src.conv`, jax-ml/jax#12868).
Models built on `invjax._src.conv` (every invjax network) do not have the problem: with them
a `while_loop` attack step costs the same as an unrolled one. A user's model built on plain
`flax.linen.Conv` / `lax.conv` still does.
The attacks therefore trace their step loops as straight-line code on CPU when the model
uses lax's convolution (`resolve_unroll` looks at the model's jaxpr): the step
count is static and bounded, and every step masks the examples that are already done, so
the unrolled loop returns exactly what the `while_loop` returns; only the early exit of
the whole batch (when every example is done) is lost. On GPU/TPU they keep one compiled
`lax.while_loop`. `unroll=None` picks by `jax.default_backend()`, the loop length and the model.
"""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

import jax
import jax.extend.core as jax_core

State = TypeVar("State")


# Above this many traced steps, `unroll=None` keeps the loop: compilation time grows with
# the number of copies and outweighs the faster steps for long loops on small models.
MAX_AUTO_UNROLL = 100


# lax's convolution: its input gradient is what XLA:CPU runs slowly inside loop bodies.
_SLOW_IN_LOOPS = "conv_general_dilated"


def _primitives(jaxpr) -> set:
  """Names of every primitive in `jaxpr` and its sub-jaxprs (jit, custom_jvp, scan, ...)."""
  names = set()
  stack = [jaxpr]
  while stack:
    j = stack.pop()
    names.update(e.primitive.name for e in j.eqns)
    stack.extend(jax_core.subjaxprs(j))
  return names


def has_lax_convolution(fn: Callable, *args) -> bool:
  """Whether `fn(*args)` traces to a `lax.conv_general_dilated` (not `invjax._src.conv`'s).

  Traced abstractly (shapes only, nothing runs); `args` may be arrays, tracers or
  `jax.ShapeDtypeStruct`s.
  """
  specs = [jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a)) for a in args]
  return _SLOW_IN_LOOPS in _primitives(jax.make_jaxpr(fn)(*specs).jaxpr)


def resolve_unroll(unroll: Optional[bool], num_steps: int,
                   model: Optional[Callable] = None, *model_args) -> bool:
  """`unroll` if given. None: True on the CPU backend for at most `MAX_AUTO_UNROLL` steps,
  and, when `model` (with example `model_args`) is given, only if it uses lax's convolution:
  a model without one (dense layers, or every invjax network, built on `invjax._src.conv`) runs
  as fast in a `while_loop`, which also exits once every example is done and compiles once.
  """
  if unroll is not None:
    return bool(unroll)
  if jax.default_backend() != "cpu" or int(num_steps) > MAX_AUTO_UNROLL:
    return False
  return model is None or has_lax_convolution(model, *model_args)


def bounded_while(cond: Callable[[State], jax.Array], body: Callable[[State], State],
                  init: State, max_iter: int, *, unroll: bool) -> State:
  """`while cond(state): state = body(state)`, at most `max_iter` times.

  Args:
    cond: state -> scalar bool; the loop stops when it is False (checked before every
      step). It need not test the step count: `max_iter` bounds the loop.
    body: state -> state. With `unroll=True` it runs exactly `max_iter` times, also after
      `cond` became False, so it must leave the state's result unchanged then (mask the
      examples that are done; counters may move).
    init: the initial state.
    max_iter: Python int, the most steps.
    unroll: trace `max_iter` copies of `body` (no `while`) instead of a `lax.while_loop`.

  Returns:
    The final state.
  """
  if unroll:
    state = init
    for _ in range(int(max_iter)):
      state = body(state)
    return state

  def loop_cond(carry):
    i, state = carry
    return (i < max_iter) & cond(state)

  def loop_body(carry):
    i, state = carry
    return i + 1, body(state)

  return jax.lax.while_loop(loop_cond, loop_body, (0, init))[1]


def fori(num: int, body: Callable[[int, State], State], init: State, *,
         unroll: bool) -> State:
  """`lax.fori_loop(0, num, body, init)`, or `num` traced copies of `body` when `unroll`."""
  if unroll:
    state = init
    for i in range(int(num)):
      state = body(i, state)
    return state
  return jax.lax.fori_loop(0, num, body, init)
