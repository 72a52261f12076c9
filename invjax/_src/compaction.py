"""Batch compaction: a per-example masked loop run over buffers that shrink as examples finish.

A batch-first loop with per-example early stop freezes the examples that are done, but it
still pays for them: every step evaluates the model on the whole batch until the last
example is done. `shrinking_while` runs such a loop in stages over static buffer sizes
(`buffer_sizes`: the batch, then the powers of two below it down to a floor). A stage
ends as soon as its examples still active fit into the next buffer; the next stage gathers
them (active first, in a stable order) from the full batch, and every stage scatters its
rows back at its end. So each step of a stage after the first runs on at most twice the
examples still active (or on the floor), and one program holds
`log2(batch / floor) + 2` loop bodies at most, whatever the examples do.

The per-example results do not depend on the buffer an example sits in when the step
treats its rows independently: per-example random keys, a model whose rows do not mix, and
rows that are not active left unchanged. (torchattacks' Square queries, at every step, only
the examples still robust: a dynamic shape; this is its static-shape counterpart, one
`jax.lax.while_loop` per stage, jit-able.)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp

from invjax._src import loops


def buffer_sizes(batch: int, floor: int) -> Tuple[int, ...]:
  """The static buffer sizes of `shrinking_while`: `batch`, then the powers of two below
  it that are >= `floor` (just `(batch,)` when `floor >= batch`)."""
  sizes = [int(batch)]
  size = 1 << (int(batch) - 1).bit_length() - 1 if batch > 1 else 0
  while size >= max(int(floor), 1):
    sizes.append(size)
    size //= 2
  return tuple(sizes)


class _Stage(NamedTuple):
  shared: Any
  rows: Any


def _gather(tree, idx):
  return tree if idx is None else jax.tree.map(lambda a: a[idx], tree)


def shrinking_while(cond: Callable[[Any], jax.Array], body: Callable, active: Callable,
                    shared: Any, state: Any, consts: Any, max_iter: int,
                    sizes: Sequence[int]) -> Tuple[Any, Any]:
  """`while cond(shared) and any example is active: shared, state = body(...)`, compacted.

  Args:
    cond: shared -> scalar bool (e.g. a step counter below its limit).
    body: (shared, state rows, consts rows) -> (shared, state rows). It must treat rows
      independently and leave the rows that are not active unchanged.
    active: (state rows, consts rows) -> bool [rows], the examples still worked on.
    shared: pytree of values shared by all examples (a step counter).
    state: pytree of per-example arrays [batch, ...], read and written by `body`.
    consts: pytree of per-example arrays [batch, ...] `body` only reads (inputs, labels,
      keys); gathered, never scattered back.
    max_iter: Python int, the most steps in all (each stage's `while_loop` bound).
    sizes: static buffer sizes, decreasing, the first the batch (`buffer_sizes`).

  Returns:
    (shared, state) after the last step.
  """
  batch = sizes[0]
  for k, size in enumerate(sizes):
    nxt = sizes[k + 1] if k + 1 < len(sizes) else 0
    idx = None
    if size != batch:
      idx = jnp.argsort(~active(state, consts), stable=True)[:size]
    rows = _gather(consts, idx)

    def stage_cond(s: _Stage, rows=rows, nxt=nxt) -> jax.Array:
      return cond(s.shared) & (jnp.sum(active(s.rows, rows)) > nxt)

    def stage_body(s: _Stage, rows=rows) -> _Stage:
      return _Stage(*body(s.shared, s.rows, rows))

    out = loops.bounded_while(stage_cond, stage_body, _Stage(shared, _gather(state, idx)),
                              max_iter, unroll=False)
    shared = out.shared
    state = out.rows if idx is None else jax.tree.map(lambda a, o: a.at[idx].set(o), state,
                                                      out.rows)
  return shared, state
