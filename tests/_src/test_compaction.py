"""Batch compaction (`invjax._src.compaction`): the buffer sizes, and a toy per-example loop
whose results and work have closed forms."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import compaction


@pytest.mark.parametrize("batch, floor, want", [
    (200, 8, (200, 128, 64, 32, 16, 8)),
    (128, 8, (128, 64, 32, 16, 8)),
    (129, 32, (129, 128, 64, 32)),
    (9, 8, (9, 8)),
    (8, 8, (8,)),
    (5, 8, (5,)),
    (3, 1, (3, 2, 1)),
    (1, 1, (1,)),
])
def test_buffer_sizes(batch, floor, want):
  assert compaction.buffer_sizes(batch, floor) == want


class _Shared(NamedTuple):
  step: jax.Array
  rows: jax.Array  # buffer rows processed, summed over the steps


class _Count(NamedTuple):
  count: jax.Array
  seen: jax.Array  # the steps at which the row was processed while active, as a bitmask


def _run(targets, max_iter, floor):
  """Example e counts the steps while its count is below targets[e]."""
  batch = targets.shape[0]
  sizes = compaction.buffer_sizes(batch, floor)
  active = lambda s, c: s.count < c

  def body(shared, s, c):
    on = active(s, c)
    new = _Count(s.count + on, s.seen | jnp.where(on, 1 << shared.step, 0))
    return _Shared(shared.step + 1, shared.rows + s.count.shape[0]), new

  init = _Count(jnp.zeros(batch, jnp.int32), jnp.zeros(batch, jnp.int32))
  fn = jax.jit(lambda t: compaction.shrinking_while(
      lambda sh: sh.step < max_iter, body, active, _Shared(jnp.int32(0), jnp.int32(0)), init,
      t, max_iter, sizes))
  return fn(targets)


@pytest.mark.parametrize("batch, floor", [(37, 4), (64, 8), (6, 8), (20, 1)])
def test_results_and_work_follow_the_active_examples(batch, floor):
  """Closed forms: example e is active at steps 0 .. min(t_e, max_iter) - 1 and nowhere else
  (so its count is min(t_e, max_iter) and its bitmask 2^min(.) - 1, whatever buffer it
  sat in, which also checks that rows and their constants stay aligned); the loop takes
  max_t min(t_e, max_iter) steps; every step runs on at most max(2 a_t, smallest) rows,
  a_t the examples active at step t and `smallest` the floor (a power of two here) or the
  batch if smaller: a stage of S rows runs only while more than S / 2 examples are active
  (the first, of the batch, while more than the largest power of two below it)."""
  max_iter = 30
  rng = np.random.default_rng(batch)
  # Many examples finish early, a few run long, some beyond max_iter, one never starts.
  t = np.minimum(rng.geometric(0.15, batch), max_iter + 5)
  t[0] = 0
  shared, out = _run(jnp.asarray(t, jnp.int32), max_iter, floor)
  done = np.minimum(t, max_iter)
  np.testing.assert_array_equal(np.asarray(out.count), done)
  np.testing.assert_array_equal(np.asarray(out.seen), (1 << done) - 1)
  assert int(shared.step) == done.max()
  a = np.array([np.sum(done > s) for s in range(done.max())])
  bound = np.sum(np.maximum(2 * a, min(floor, batch)))
  assert int(shared.rows) <= bound, (int(shared.rows), bound)
  if batch > 2 * floor:  # compaction happened: far less work than the uncompacted loop
    assert int(shared.rows) < 0.75 * batch * done.max()


def test_no_compaction_runs_the_whole_batch():
  t = jnp.asarray([1, 5, 2, 9], jnp.int32)
  shared, out = _run(t, 20, floor=8)
  np.testing.assert_array_equal(np.asarray(out.count), [1, 5, 2, 9])
  assert int(shared.rows) == 4 * 9
