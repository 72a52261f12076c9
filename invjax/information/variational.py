"""Variational lower bounds on mutual information and a critic trainer (in nats).

Each bound takes the critic's score matrix `scores[i, j] = T(x_i, y_j)` of a batch of n joint
samples (diagonal: p(x, y); off-diagonal: p(x) p(y)) and returns a scalar (Poole et al. 2019,
"On variational bounds of mutual information"):

* `infonce(scores)`  = mean_i [T_ii - log mean_j exp T_ij]; never above log n (Oord et al. 2018).
* `nwj(scores)`      = mean_i T_ii - exp(-1) mean_{i != j} exp T_ij (Nguyen, Wainwright & Jordan
  2010; the f-divergence bound, optimal critic 1 + log p(x, y) / p(x) p(y)).
* `donsker_varadhan(scores)` = mean_i T_ii - log mean_{i != j} exp T_ij (the bound MINE
  maximises, Belghazi et al. 2018). Its plain minibatch gradient is biased (the log of a
  minibatch mean); `mine_loss` replaces the denominator of the gradient of the log term,
  mean e^T, by an exponential moving average over steps (MINE's bias correction; the EMA is
  debiased like Adam's moments so the first step uses its own batch).

`train_critic(critic, x, y, key=..., bound=...)` maximises one bound with optax on a training
split and returns the bound on held-out samples (`CriticEstimate`). The `benchmark-mi` package
(JAX implementations of these bounds) pins jax<0.5 and cannot be installed next to invjax.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src.checks import InvjaxError, check_finite, check_floating

Array = jax.Array
BOUNDS = ("infonce", "nwj", "mine")


def _check_scores(scores) -> int:
  if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
    raise InvjaxError(f"scores must be a square [n, n] matrix with n >= 2, got {scores.shape}")
  return scores.shape[0]


def _offdiag_logmeanexp(scores: Array) -> Array:
  n = scores.shape[0]
  masked = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, scores)
  return jax.nn.logsumexp(masked) - jnp.log(n * (n - 1.0))


def infonce(scores: Array) -> Array:
  """InfoNCE lower bound of a batch's score matrix; at most log n."""
  n = _check_scores(scores)
  return jnp.mean(jnp.diag(scores) - jax.nn.logsumexp(scores, axis=1)) + jnp.log(float(n))


def nwj(scores: Array) -> Array:
  """NWJ (f-divergence) lower bound: mean T_ii - e^{-1} mean_{i != j} e^{T_ij}."""
  _check_scores(scores)
  return jnp.mean(jnp.diag(scores)) - jnp.exp(_offdiag_logmeanexp(scores) - 1.0)


def donsker_varadhan(scores: Array) -> Array:
  """Donsker-Varadhan lower bound (MINE's): mean T_ii - log mean_{i != j} e^{T_ij}."""
  _check_scores(scores)
  return jnp.mean(jnp.diag(scores)) - _offdiag_logmeanexp(scores)


class MineEMA(NamedTuple):
  """MINE's moving average of mean e^T over the product-of-marginals pairs, in log space."""
  log_ema: Array  # log of the (not yet debiased) moving average; -inf before the first step
  count: Array    # steps averaged so far (int32)


def mine_ema_init() -> MineEMA:
  return MineEMA(jnp.array(-jnp.inf, jnp.float32), jnp.array(0, jnp.int32))


def mine_loss(scores: Array, ema: MineEMA, *, ema_rate: float = 0.01
              ) -> Tuple[Array, Tuple[Array, MineEMA]]:
  """MINE's bias-corrected loss: (loss, (DV bound, updated EMA)).

  The loss's value is -DV; its gradient is -(mean grad T_ii - E_q[e^T grad T] / ema), with
  ema the moving average of E_q[e^T] including this batch (Belghazi et al. 2018, sec. 3.2).
  """
  _check_scores(scores)
  lme = _offdiag_logmeanexp(scores)
  a = float(ema_rate)
  log_ema = jnp.logaddexp(jnp.log1p(-a) + ema.log_ema, jnp.log(a) + jax.lax.stop_gradient(lme))
  count = ema.count + 1
  debiased = log_ema - jnp.log(-jnp.expm1(count * jnp.log1p(-a)))
  surrogate = jnp.exp(lme - jax.lax.stop_gradient(debiased))  # grad: E_q[e^T grad T] / ema
  log_term = surrogate - jax.lax.stop_gradient(surrogate) + jax.lax.stop_gradient(lme)
  joint = jnp.mean(jnp.diag(scores))
  return -(joint - log_term), (joint - lme, MineEMA(log_ema, count))


_EVAL = {"infonce": infonce, "nwj": nwj, "mine": donsker_varadhan}


class CriticState(NamedTuple):
  """The training loop's state."""
  params: Any
  opt_state: Any
  key: Array
  ema: MineEMA
  step: Array


class CriticEstimate(NamedTuple):
  """What `train_critic` returns.

  Attributes:
    estimate: the bound averaged over held-out batches of `batch_size` (nats).
    test_bounds: [num_test_batches] the bound of each held-out batch.
    train_bounds: [num_steps] the bound of each training minibatch (before its update).
    params: the trained critic's variables.
  """
  estimate: Array
  test_bounds: Array
  train_bounds: Array
  params: Any


def _as_samples(v, name):
  v = jnp.asarray(v)
  v = v[:, None] if v.ndim == 1 else v
  if v.ndim != 2:
    raise InvjaxError(f"{name} must have shape [n] or [n, d], got {v.shape}")
  check_floating(v, name)
  check_finite(v, name)
  return v


def evaluate_bound(critic, params, x, y, *, bound: str = "infonce", batch_size: int = 128
                   ) -> Array:
  """The bound of each consecutive batch of `batch_size` joint samples `[num_batches]` (the
  remainder is dropped; fewer than batch_size samples make one batch)."""
  if bound not in BOUNDS:
    raise InvjaxError(f"bound must be one of {BOUNDS}, got '{bound}'")
  x, y = _as_samples(x, "x"), _as_samples(y, "y")
  b = min(batch_size, x.shape[0])
  num = x.shape[0] // b
  xb = x[:num * b].reshape(num, b, -1)
  yb = y[:num * b].reshape(num, b, -1)
  fn = _EVAL[bound]
  return jax.jit(jax.vmap(lambda u, v: fn(critic.apply(params, u, v))))(xb, yb)


def train_critic(critic, x, y, *, key: Array, bound: str = "infonce", num_steps: int = 500,
                 batch_size: int = 128, learning_rate: float = 1e-3,
                 test_fraction: float = 0.25, x_test=None, y_test=None,
                 ema_rate: float = 0.01,
                 optimizer: Optional[optax.GradientTransformation] = None) -> CriticEstimate:
  """Trains `critic` (a module from `invjax.information.critics`) to maximise `bound`.

  Args:
    critic: a Flax module `critic.apply(params, x, y) -> scores [n, n]`.
    x, y: joint samples `[n, dx]`, `[n, dy]` (or `[n]`).
    key: PRNG key (split between the held-out split, the initialisation and minibatches).
    bound: "infonce", "nwj" or "mine" (Donsker-Varadhan with MINE's EMA-corrected gradient).
    num_steps, batch_size, learning_rate: Adam on minibatches drawn without replacement.
    test_fraction: share of (x, y) held out for the estimate, when x_test / y_test are None.
    x_test, y_test: held-out joint samples (then all of x, y trains).
    ema_rate: MINE's moving-average rate (ignored by the other bounds).
    optimizer: replaces `optax.adam(learning_rate)`.

  Returns:
    CriticEstimate; `estimate` is the bound on held-out batches of `batch_size`.
  """
  if bound not in BOUNDS:
    raise InvjaxError(f"bound must be one of {BOUNDS}, got '{bound}'")
  x, y = _as_samples(x, "x"), _as_samples(y, "y")
  if x.shape[0] != y.shape[0]:
    raise InvjaxError(f"x and y must have the same number of rows, got {x.shape} and {y.shape}")
  if num_steps < 1 or batch_size < 2:
    raise InvjaxError(f"need num_steps >= 1 and batch_size >= 2, got {num_steps}, {batch_size}")
  if not 0.0 < ema_rate < 1.0:
    raise InvjaxError(f"ema_rate must lie in (0, 1), got {ema_rate}")
  key, split_key, init_key = jax.random.split(key, 3)
  if (x_test is None) != (y_test is None):
    raise InvjaxError("give both x_test and y_test, or neither")
  if x_test is None:
    if not 0.0 < test_fraction < 1.0:
      raise InvjaxError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = np.asarray(jax.random.permutation(split_key, x.shape[0]))
    n_test = int(round(test_fraction * x.shape[0]))
    x_test, y_test = x[perm[:n_test]], y[perm[:n_test]]
    x, y = x[perm[n_test:]], y[perm[n_test:]]
  x_test, y_test = _as_samples(x_test, "x_test"), _as_samples(y_test, "y_test")
  n = x.shape[0]
  if n < batch_size or x_test.shape[0] < 2:
    raise InvjaxError(f"batch_size={batch_size} needs at least that many training samples "
                      f"(got {n}) and >= 2 held-out samples (got {x_test.shape[0]})")
  opt = optimizer if optimizer is not None else optax.adam(learning_rate)
  params = critic.init(init_key, x[:2], y[:2])
  state = CriticState(params, opt.init(params), key, mine_ema_init(), jnp.array(0, jnp.int32))

  def loss_fn(params, ema, xb, yb):
    scores = critic.apply(params, xb, yb)
    if bound == "mine":
      return mine_loss(scores, ema, ema_rate=ema_rate)
    value = _EVAL[bound](scores)
    return -value, (value, ema)

  def step(state: CriticState, _):
    key, sub = jax.random.split(state.key)
    idx = jax.random.permutation(sub, n)[:batch_size]
    (_, (value, ema)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.ema, x[idx], y[idx])
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return CriticState(params, opt_state, key, ema, state.step + 1), value

  b = min(batch_size, x_test.shape[0])
  num_test = x_test.shape[0] // b
  xt = x_test[:num_test * b].reshape(num_test, b, -1)
  yt = y_test[:num_test * b].reshape(num_test, b, -1)

  @jax.jit
  def run(state, xt, yt):  # training and held-out evaluation in one program
    state, train_bounds = jax.lax.scan(step, state, None, length=num_steps)
    test = jax.vmap(lambda u, v: _EVAL[bound](critic.apply(state.params, u, v)))(xt, yt)
    return state, train_bounds, test

  state, train_bounds, test_bounds = run(state, xt, yt)
  return CriticEstimate(jnp.mean(test_bounds), test_bounds, train_bounds, state.params)
