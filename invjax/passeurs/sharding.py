"""Passeurs across processes: each process embeds and poisons its whole batches of the images.

In a multi-process run (`jax.distributed`, one process per host of a TPU pod slice or a GPU
cluster) every process holds all the training and test images, but computes features and
poisoning steps for its own rows only: the `n` images are cut into the batches a single
process would run (`ceil(n / batch_size)` batches of `min(batch_size, n)` rows, the last one
padded by repeating its last row), and process `p` of `P` takes the contiguous batches
`[p * nb // P, (p + 1) * nb // P)` (`invjax.parallel.process_block`). Each batch therefore
holds exactly the rows, padding included, it holds in a single-process run, so the same
compiled program gives the same bits, and `RowShard.gather` (an all-gather,
`invjax.parallel.gather_blocks`) puts the rows back in their order on every process:
features, poisoned images, hence the SVMs fitted on them and the written `.npz`, equal those
of the single-process run.

  shard = shard_rows(len(x), batch_size, across_processes=True)
  f = shard.gather(embed(extractor, shard.take(x), batch_size=batch_size))   # [n, d] everywhere

`broadcast` gives every process process 0's copy of a pytree (the fitted SVMs: the poisoning
gradient needs the same SVM on all processes), `all_agree` makes a yes/no decision common
(e.g. "is this cache file there?"). Without `across_processes` (or with one process) a
`RowShard` spans all rows and `take` / `gather` return their argument.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

from invjax import parallel
from invjax._src.checks import InvjaxError


def batch_rows(n: int, batch_size: int, *, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> slice:
  """The rows `[start, stop)` of `n` that process `process_index` of `process_count` takes
  (default: this process of this run): its contiguous block of whole batches.

  Raises:
    InvjaxError: `n < 1`, `batch_size < 1`, or fewer batches than processes (a process
      would have nothing to compute: lower `batch_size`).
  """
  n, batch_size = int(n), int(batch_size)
  if n < 1 or batch_size < 1:
    raise InvjaxError(f"batch_rows: need n >= 1 and batch_size >= 1, got n={n}, "
                      f"batch_size={batch_size}")
  count = jax.process_count() if process_count is None else int(process_count)
  bs = min(batch_size, n)
  num_batches = -(-n // bs)
  block = parallel.process_block(num_batches, process_index=process_index, process_count=count)
  if num_batches < count:
    raise InvjaxError(
        f"{n} images in batches of {bs} make {num_batches} batch(es), fewer than the "
        f"{count} processes: every process needs at least one batch; use batch_size <= "
        f"{max(1, n // count)}")
  return slice(block.start * bs, min(block.stop * bs, n))


class RowShard(NamedTuple):
  """This process's rows of `n` (`batch_rows`); `across`: False for a single process.

  `take(a)`: the rows of a full array `a` ([n, ...]) that this process computes, padded by
  repeating the last row up to one batch when the block is shorter (the last, partial batch
  alone), as the single-process run pads it; `gather(local)`: the outputs of every process
  (local length: `len(take(a))`), padding dropped, in row order, on every process.
  """
  n: int
  batch_size: int
  start: int
  stop: int
  across: bool

  @property
  def padded(self) -> int:
    """Rows of `take`'s output."""
    return max(self.stop - self.start, min(self.batch_size, self.n))

  def take(self, a):
    if not self.across:
      return a
    a = np.asarray(a)
    if a.shape[:1] != (self.n,):
      raise InvjaxError(f"RowShard.take: expected {self.n} rows, got shape {a.shape}")
    local = a[self.start:self.stop]
    missing = self.padded - len(local)
    if missing:
      local = np.concatenate([local, np.repeat(local[-1:], missing, axis=0)])
    return local

  def gather(self, local):
    if not self.across:
      return local
    local = np.asarray(local)
    if local.shape[:1] != (self.padded,):
      raise InvjaxError(f"RowShard.gather: expected {self.padded} local rows, got shape "
                        f"{local.shape}")
    count = jax.process_count()
    blocks = [batch_rows(self.n, self.batch_size, process_index=p, process_count=count)
              for p in range(count)]
    return parallel.gather_blocks(local[:self.stop - self.start],
                                  [b.stop - b.start for b in blocks])

  def map(self, fn: Callable[..., Any], arrays: Sequence[Any]) -> np.ndarray:
    """`gather(fn(*[take(a) for a in arrays]))`, for an `fn` returning one array."""
    return self.gather(fn(*[self.take(a) for a in arrays]))


def shard_rows(n: int, batch_size: int, *, across_processes: bool = False) -> RowShard:
  """This process's `RowShard` of `n` rows; all rows unless `across_processes` and the run
  has several processes (`batch_rows` checks that each gets a batch)."""
  if int(n) < 1 or int(batch_size) < 1:
    raise InvjaxError(f"shard_rows: need n >= 1 and batch_size >= 1, got n={n}, "
                      f"batch_size={batch_size}")
  if not across_processes or jax.process_count() == 1:
    return RowShard(int(n), int(batch_size), 0, int(n), False)
  rows = batch_rows(n, batch_size)
  return RowShard(int(n), int(batch_size), rows.start, rows.stop, True)


def _is_array(x) -> bool:
  return isinstance(x, (np.ndarray, jax.Array, np.generic))


def broadcast(tree: Any) -> Any:
  """Process 0's values of every array leaf of `tree` on every process (exact copies, an
  all-gather), as numpy; other leaves are kept. Every process calls it with a tree of the
  same structure and shapes. A single process gets `tree` back unchanged."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.asarray(leaf) for leaf in leaves if _is_array(leaf)]
  gathered = iter(multihost_utils.process_allgather(arrays, tiled=False))
  out = [np.asarray(next(gathered))[0] if _is_array(leaf) else leaf for leaf in leaves]
  return jax.tree.unflatten(treedef, out)


def all_agree(flag: bool) -> bool:
  """True when `flag` is True on every process (a collective: all processes call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32), tiled=True)
  return bool(np.all(np.asarray(flags) == 1))
