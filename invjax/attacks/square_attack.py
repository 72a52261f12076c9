"""Square attack (Andriushchenko et al. 2020): score-based random search, L_inf and L2.

"Square Attack: a query-efficient black-box adversarial attack via random search" (ECCV 2020),
the black-box member of AutoAttack. It never differentiates the model: it only reads its
logits, so it breaks models whose gradients are masked (zero, NaN, shattered), which is why
a gap between a gradient attack and Square flags gradient masking.

  result = square(logits_fn, x, y, *, key, epsilon, norm="linf")   # -> AttackResult

Each iteration proposes one candidate per example, a change of the current best point
inside a random square window, queries the model once and keeps the candidate only where
it lowers the loss (the logit margin by default) or is adversarial:

  * L_inf: start from vertical stripes (`x + eps * s`, one random sign per column and
    channel); a candidate sets a window to `x +- eps` (one random sign per channel).
  * L2: start from a grid of windows each holding the paper's pattern (two halves of
    concentric rectangles of opposite signs) with random signs per channel, scaled to
    norm eps; a candidate moves the perturbation of a second window, and the budget left,
    into the first window on top of a fresh pattern, then rescales to norm eps.

The window side follows the paper's schedule of the fraction p of pixels it covers:
`p_init`, halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
10,000-query run, rescaled to `num_queries` (`p_schedule`); side = round(sqrt(p * H * W))
(at least 1 for L_inf, at least 3 and odd for L2). Window positions are uniform over the
positions inside the image and drawn per example.

The search is one compiled program of `lax.while_loop`s (no gradient, so no reason to
unroll on CPU), batch-first and jit-able (wrap it in `jax.jit` with `logits_fn` closed over
and the structural arguments static). Per-example early stop: an adversarial example is no
longer queried, and the search exits once every example is adversarial or out of queries.
Batch compaction (`invjax._src.compaction`): the iterations run over buffers that halve as
examples break (the batch, then powers of two down to `min_buffer`), each holding the
examples still searched, so the model is not evaluated on many finished examples. The
random draws of an iteration are made for the whole batch (from `key`, the restart and the
iteration) and each buffer keeps its examples' rows, and the window side is a function of
the iteration, which the examples searched share: an example's search does not depend on
the buffer it runs in, so compaction changes the cost, not the result.

Queries are counted per example in `result.num_forward_evals`: the clean input (an example
already misclassified costs 1 and is returned unchanged), then per restart the starting
point and one per iteration while the example is searched; at most `num_queries` per
example and restart (`num_queries * num_restarts` in all). The success re-check of
`from_adversarial` is not counted.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import checks
from invjax._src import compaction
from invjax._src import compilation
from invjax._src import geometry
from invjax._src import loops
from invjax._src.geometry import NORMS, TINY
from invjax.attacks import inputs
from invjax.attacks.result import AttackResult, from_adversarial, is_adversarial

LogitsFn = inputs.LogitsFn

LOSSES = ("margin", "ce")

# Smallest compaction buffer (`min_buffer=None`): every buffer size is one more compiled
# copy of the search step (the model included), and below 8 rows a step can save at most 7
# rows; accelerators are only busy with large batches.
DEFAULT_MIN_BUFFER = 8
DEFAULT_MIN_BUFFER_ACCELERATOR = 256

# Iterations of a 10,000-query run after which the paper's schedule halves p once more.
P_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# ----------------------------------------------------------------------------- schedule & loss


def halving_thresholds(num_queries: int) -> tuple:
  """Static iteration indices from which p is halved once more, for a `num_queries` run.

  The official schedule rescales iteration `i` to `int(i / num_queries * 10000)` and halves
  p when that exceeds a breakpoint b; in integers: `i >= ceil((b + 1) * num_queries / 10000)`.
  """
  return tuple(-(-(b + 1) * int(num_queries) // 10000) for b in P_HALVING_ITERATIONS)


def p_schedule(i, num_queries: int, p_init: float) -> jax.Array:
  """Fraction of the pixels a window covers at iteration `i` (0-based, may be traced)."""
  halvings = sum((jnp.asarray(i) >= t).astype(jnp.int32) for t in halving_thresholds(num_queries))
  return p_init / jnp.exp2(halvings.astype(jnp.float32))


def _side(i, num_queries: int, p_init: float, height: int, width: int, norm: str) -> jax.Array:
  """Window side (int32 scalar) at iteration `i`: round(sqrt(p H W)), clipped to the image."""
  side = jnp.round(jnp.sqrt(p_schedule(i, num_queries, p_init) * height * width)).astype(jnp.int32)
  if norm == "l2":
    side = jnp.maximum(side, 3)
    side = side + (side % 2 == 0)
  return jnp.clip(side, 1, min(height, width))


def _search_loss(logits: jax.Array, y: jax.Array, loss: str, targeted: bool) -> jax.Array:
  """Per-example loss the search *minimises*, float [batch]."""
  if loss == "ce":
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return ce if targeted else -ce
  m = geometry.logit_margin(logits, y)
  return -m if targeted else m


# ----------------------------------------------------------------------------- windows


def _bx(v: jax.Array) -> jax.Array:
  """[batch] -> [batch, 1, 1, 1]."""
  return v.reshape(v.shape + (1,) * (4 - v.ndim))


def _coords(x: jax.Array, top: jax.Array, left: jax.Array):
  """Row and column of every pixel relative to a window corner, int [batch, H, W, 1]."""
  _, h, w, _ = x.shape
  rows = jnp.arange(h, dtype=jnp.int32).reshape(1, h, 1, 1)
  cols = jnp.arange(w, dtype=jnp.int32).reshape(1, 1, w, 1)
  return rows - _bx(top), cols - _bx(left)


def _inside(r, c, side) -> jax.Array:
  return (r >= 0) & (r < side) & (c >= 0) & (c < side)


def _corners(key: jax.Array, rows, x: jax.Array, side):
  """Uniform top-left corners [rows] (rows, cols) of windows of `side` inside the image.

  `rows` = (idx, num): the draws are made for all `num` examples of the batch and the
  rows `idx` (the buffer's examples) are kept, so that an example's draws do not depend
  on the buffer it is in (`invjax._src.compaction`)."""
  (idx, num), (_, h, w, _) = rows, x.shape
  k_r, k_c = jax.random.split(key)
  top = jax.random.randint(k_r, (num,), 0, h - side + 1, dtype=jnp.int32)[idx]
  left = jax.random.randint(k_c, (num,), 0, w - side + 1, dtype=jnp.int32)[idx]
  return top, left


def _rectangles(i, j, a, b, cum):
  """The paper's pattern on an a x b rectangle at (i, j): the sum of 1 / (k + 1)^2 over the
  concentric rectangles k = 0 .. max(a, b) // 2 around (a // 2, b // 2) that hold (i, j)."""
  d = jnp.maximum(jnp.abs(i - a // 2), jnp.abs(j - b // 2))
  rings = jnp.maximum(a // 2, b // 2) + 1
  last = cum.shape[0] - 1
  return jnp.take(cum, jnp.clip(rings, 0, last)) - jnp.take(cum, jnp.clip(d, 0, last))


def _eta(r, c, side, transpose, max_side: int) -> jax.Array:
  """The L2 window pattern, unit norm per example, 0 outside the window: the top half of
  the window holds `_rectangles`, the bottom half minus it (each half of unit norm), rows
  and columns swapped where `transpose`. r, c: int [batch, H, W, 1] window coordinates."""
  cum = jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max_side + 2) ** 2)]),
                    jnp.float32)  # cum[m] = sum_{k=1..m} 1 / k^2
  r, c = jnp.where(transpose, c, r), jnp.where(transpose, r, c)
  inside = _inside(r, c, side)
  half = side // 2
  top = jnp.where(inside & (r < half), _rectangles(r, c, half, side, cum), 0.0)
  bottom = jnp.where(inside & (r >= half), _rectangles(r - half, c, side - half, side, cum), 0.0)
  eta = top / jnp.maximum(geometry.l2_norm(top), TINY)
  eta = eta - bottom / jnp.maximum(geometry.l2_norm(bottom), TINY)
  return geometry.unit_l2(eta)


def window_pattern(side: int) -> np.ndarray:
  """The L2 window pattern of a `side` x `side` window as a constant (what `_eta` computes
  in the loop, where the side is traced), float32 numpy, unit norm."""
  cum = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, side + 2) ** 2)])

  def rectangles(a):
    i, j = np.arange(a)[:, None], np.arange(side)[None, :]
    v = cum[max(a // 2, side // 2) + 1] - cum[np.maximum(np.abs(i - a // 2), np.abs(j - side // 2))]
    return v / max(np.linalg.norm(v), TINY)

  eta = np.concatenate([rectangles(side // 2), -rectangles(side - side // 2)])
  return (eta / np.linalg.norm(eta)).astype(np.float32)


def _channel_norm(v: jax.Array) -> jax.Array:
  """Per-example, per-channel L2 norm over the pixels, [batch, 1, 1, C]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))


# ----------------------------------------------------------------------------- L_inf / L2 moves


def _linf_init(key, x, eps):
  """Vertical stripes: x + eps * sign, one random sign per example, column and channel."""
  b, _, w, c = x.shape
  stripes = jax.random.rademacher(key, (b, 1, w, c), x.dtype)
  return jnp.clip(x + eps * stripes, 0.0, 1.0)


def _linf_candidate(key, rows, x_best, x, eps, side):
  """Sets one window per example to x +- eps (one random sign per channel)."""
  k_pos, k_sign = jax.random.split(key)
  top, left = _corners(k_pos, rows, x, side)
  r, c = _coords(x, top, left)
  signs = jax.random.rademacher(k_sign, (rows[1], 1, 1, x.shape[-1]), x.dtype)[rows[0]]
  cand = jnp.where(_inside(r, c, side), x_best + 2.0 * eps * signs, x_best)
  return geometry.project(cand, x, eps, "linf")


def _l2_init(key, x, eps):
  """A grid of windows of side H // 5, each the L2 pattern with random signs per channel
  (and a random orientation), scaled to norm eps."""
  b, h, w, c = x.shape
  side = max(h // 5, 1)
  starts = lambda n: [(n - 5 * side) // 2 + k * side for k in range(n // side)]
  grid = [(t, l) for t in starts(h) for l in starts(w)
          if t >= 0 and l >= 0 and t + side <= h and l + side <= w]
  pattern = window_pattern(side)
  window = np.full((h, w), len(grid))  # the window of each pixel; len(grid): none
  tiles = np.zeros((2, h, w), np.float32)  # the pattern, as is and transposed
  for n, (t, l) in enumerate(grid):
    window[t:t + side, l:l + side] = n
    tiles[:, t:t + side, l:l + side] = pattern, pattern.T
  k_t, k_s = jax.random.split(key)
  transpose = jax.random.bernoulli(k_t, 0.5, (b, len(grid) + 1))[:, window]
  signs = jax.random.rademacher(k_s, (b, len(grid) + 1, c), x.dtype).at[:, -1].set(0.0)
  delta = jnp.where(transpose[..., None], tiles[1][..., None], tiles[0][..., None])
  delta = delta * signs[:, window]
  return jnp.clip(x + eps * geometry.unit_l2(delta), 0.0, 1.0)


def _l2_candidate(key, rows, x_best, x, eps, side):
  """The paper's L2 move: the perturbation of windows W1 and W2 and the unused budget go
  into W1 (per channel: its old content, normalised, plus a fresh signed pattern), W2 is
  emptied, and the whole perturbation is rescaled to norm eps."""
  k1, k2, k_t, k_s = jax.random.split(key, 4)
  (idx, b), c = rows, x.shape[-1]
  r1, c1 = _coords(x, *_corners(k1, rows, x, side))
  r2, c2 = _coords(x, *_corners(k2, rows, x, side))
  w1, w2 = _inside(r1, c1, side), _inside(r2, c2, side)
  delta = x_best - x
  budget = jnp.maximum(jnp.square(eps) - jnp.square(geometry.l2_norm(delta)), 0.0) / c
  target = jnp.sqrt(budget + jnp.square(_channel_norm(jnp.where(w1 | w2, delta, 0.0))))
  old = jnp.where(w1, delta, 0.0)
  transpose = jax.random.bernoulli(k_t, 0.5, (b, 1, 1, 1))[idx]
  signs = jax.random.rademacher(k_s, (b, 1, 1, c), x.dtype)[idx]
  new = _eta(r1, c1, side, transpose, max(x.shape[1:3])) * signs
  new = new + old / jnp.maximum(_channel_norm(old), TINY)
  new = new / jnp.maximum(_channel_norm(new), TINY) * target
  delta = jnp.where(w1, new, jnp.where(w2, 0.0, delta))
  return jnp.clip(x + eps * geometry.unit_l2(delta), 0.0, 1.0)


_MOVES = {"linf": (_linf_init, _linf_candidate), "l2": (_l2_init, _l2_candidate)}


# ----------------------------------------------------------------------------- the attack


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, epsilon,
           norm: str = "linf", num_queries: int = 5000, p_init: float = 0.8,
           num_restarts: int = 1, loss: str = "margin", early_stop: bool = True,
           targeted: bool = False, min_buffer: Optional[int] = None) -> AttackResult:
  """Square attack (Andriushchenko et al. 2020), L_inf or L2, score-based (no gradients).

  Args:
    logits_fn: model, `[batch, H, W, C] -> [batch, classes]`; only its outputs are used.
    x: float [batch, H, W, C] images in [0, 1] (NHWC).
    y: int [batch] true labels (targets when `targeted`).
    key: PRNG key of every random draw.
    epsilon: scalar or [batch] budget (> 0) in the chosen norm.
    norm: "linf" or "l2" (static).
    num_queries: queries per example and restart, >= 2 (static); the first restart's
      include the clean input's. Also sets the window schedule (`p_schedule`).
    p_init: starting fraction of the pixels a window covers, in (0, 1] (static).
    num_restarts: independent searches (static); each restarts, from a fresh starting
      point, only the examples no earlier one broke.
    loss: "margin" (logit margin) or "ce" (cross-entropy) (static).
    early_stop: stop querying an example once it is adversarial (static). Without it
      every example uses all its queries to lower the loss further (it stays adversarial).
    targeted: reach class `y` instead of leaving it (static).
    min_buffer: smallest buffer the examples still searched are compacted into (static,
      module docstring); None: `DEFAULT_MIN_BUFFER` on CPU, `DEFAULT_MIN_BUFFER_ACCELERATOR`
      elsewhere; `>= batch`: no compaction. It changes the cost, not the result.

  Returns:
    AttackResult; `num_forward_evals` is int32 [batch], the queries spent on each example
    (module docstring), `num_grad_evals` is 0. An example the search could not break gets
    its lowest-loss point (x itself if no candidate beat the clean input).
  """
  inputs.validate(logits_fn, x, y, epsilon=epsilon, choices=(("norm", norm, NORMS),
                                                            ("loss", loss, LOSSES)))
  if np.ndim(x) != 4:
    raise checks.InvjaxError(
        f"square needs NHWC images [batch, H, W, C], got x of shape {np.shape(x)}")
  if key is None:
    raise checks.InvjaxError("square needs a PRNG key (key=None given)")
  inputs.check_positive_int(num_queries, "num_queries")
  if num_queries < 2:
    raise checks.InvjaxError(
        f"num_queries must be >= 2 (the clean input and a starting point), got {num_queries}")
  inputs.check_positive_int(num_restarts, "num_restarts")
  if (isinstance(p_init, bool) or not isinstance(p_init, (int, float, np.floating))
      or not 0.0 < p_init <= 1.0):
    raise checks.InvjaxError(f"p_init must be a float in (0, 1], got {p_init!r}")
  if min_buffer is None:
    cpu = jax.default_backend() == "cpu"
    min_buffer = DEFAULT_MIN_BUFFER if cpu else DEFAULT_MIN_BUFFER_ACCELERATOR
  inputs.check_positive_int(min_buffer, "min_buffer")
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (np.shape(x)[0],))
  return _square(logits_fn, jnp.asarray(x), jnp.asarray(y), key, eps, norm=norm,
                 num_queries=int(num_queries), p_init=float(p_init),
                 num_restarts=int(num_restarts), loss=loss, early_stop=bool(early_stop),
                 targeted=bool(targeted), min_buffer=int(min_buffer))


class _Best(NamedTuple):
  """Per example: the best point so far, its loss, whether it is adversarial, queries."""
  x: jax.Array
  loss: jax.Array
  adv: jax.Array
  queries: jax.Array


class _Rows(NamedTuple):
  """Per example, what a restart's search only reads: the input, label, budget [b,1,1,1],
  index in the batch, and whether it takes no part (broken before the restart)."""
  x: jax.Array
  y: jax.Array
  eps: jax.Array
  index: jax.Array
  frozen: jax.Array


class _Restarts(NamedTuple):
  r: jax.Array
  best: _Best


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "norm", "num_queries", "p_init", "num_restarts", "loss", "early_stop",
    "targeted", "min_buffer"))
def _square(logits_fn, x, y, key, eps, *, norm, num_queries, p_init, num_restarts, loss,
            early_stop, targeted, min_buffer):
  """The compiled search; `eps` is float [batch]."""
  batch, height, width, _ = x.shape
  chex.assert_shape([y, eps], (batch,))
  eps_b = _bx(eps)
  init_fn, candidate_fn = _MOVES[norm]
  sizes = compaction.buffer_sizes(batch, min_buffer)

  def evaluate(v, labels):
    logits = logits_fn(v)
    return (_search_loss(logits, labels, loss, targeted),
            is_adversarial(logits, labels, targeted=targeted))

  def active(s: _Best, c: _Rows) -> jax.Array:
    return ~c.frozen & ~s.adv if early_stop else ~c.frozen

  def search(k_loop):
    def body(i, s: _Best, c: _Rows):
      on = active(s, c)
      side = _side(i, num_queries, p_init, height, width, norm)
      cand = candidate_fn(jax.random.fold_in(k_loop, i), (c.index, batch), s.x, c.x, c.eps,
                          side)
      cand_loss, cand_adv = evaluate(cand, c.y)
      # Lower loss (never trading an adversarial point for a non-adversarial one), or the
      # first adversarial point.
      take = on & (((cand_loss < s.loss) & (cand_adv | ~s.adv)) | (cand_adv & ~s.adv))
      return i + 1, _Best(jnp.where(_bx(take), cand, s.x), jnp.where(take, cand_loss, s.loss),
                          s.adv | (take & cand_adv), s.queries + on.astype(jnp.int32))
    return body

  def one_restart(r, best: _Best) -> _Best:
    k_init, k_loop = jax.random.split(jax.random.fold_in(key, r))
    frozen = best.adv
    x0 = init_fn(k_init, x, eps_b)
    loss0, adv0 = evaluate(x0, y)
    start = _Best(jnp.where(_bx(frozen), best.x, x0), jnp.where(frozen, best.loss, loss0),
                  frozen | adv0, best.queries + (~frozen).astype(jnp.int32))
    # The first restart's budget also holds the clean input's query.
    limit = num_queries - 1 - (jnp.asarray(r) == 0).astype(jnp.int32)
    rows = _Rows(x, y, eps_b, jnp.arange(batch), frozen)
    _, s = compaction.shrinking_while(lambda i: i < limit, search(k_loop), active,
                                      jnp.int32(0), start, rows, num_queries - 1, sizes)
    take = ~frozen & (s.adv | (s.loss < best.loss))
    return _Best(jnp.where(_bx(take), s.x, best.x), jnp.where(take, s.loss, best.loss),
                 best.adv | s.adv, s.queries)

  loss_clean, adv_clean = evaluate(x, y)
  best = _Best(x, loss_clean, adv_clean, jnp.ones((batch,), jnp.int32))
  if num_restarts == 1:
    best = one_restart(0, best)
  else:
    restarts_body = lambda s: _Restarts(s.r + 1, one_restart(s.r, s.best))
    best = loops.bounded_while(lambda s: ~jnp.all(s.best.adv), restarts_body,
                               _Restarts(jnp.int32(0), best), num_restarts, unroll=False).best
  return from_adversarial(logits_fn, x, best.x, y, targeted=targeted,
                          num_forward_evals=best.queries)
