"""Expectation over transformations (EoT; Athalye et al. 2018) for randomised models.

A randomised model is a function `random_logits_fn(x, key) -> logits [batch, classes]` whose
randomness (input noise, random transformations, dropout, a stochastic inverse, ...) is drawn
from `key`. Attacking one call of it attacks one draw: on a model whose single-draw gradient is
dominated by the noise, that gradient points nowhere and the model looks robust.

`expectation_logits(random_logits_fn, num_samples=n, key=key)` turns it into a deterministic
`logits_fn(x)`: the model averaged over `n` draws fixed once from `key`. Every invjax attack
takes a deterministic `logits_fn`, so each becomes an EoT attack by attacking that function:

  smoothed = eot.expectation_logits(noisy_model, num_samples=32, key=k_draws)
  result = attacks.pgd(smoothed, x, y, key=k_attack, epsilon=8 / 255)
  report = autoattack.autoattack(smoothed, x, y, key=k_attack, epsilon=8 / 255)

With `average="logits"` (the default) the output is the mean of the per-draw logits, so the
gradient of anything linear in the logits (a logit difference, the margin at fixed classes) is
exactly the mean of the per-draw gradients; the cross-entropy of the mean logits is the loss
of the averaged model. `average="probs"` returns `log(mean_i softmax(logits_i))`, the log of the
expected prediction (softmax of it is the mean probability), whose cross-entropy is
`-log E[p_y]`. Draws are the same at every call (fixed keys): the attack optimises one smooth
function, and its `success` is checked on that same function; check the adversarials on fresh
draws (`expectation_logits` with another key) to see that they transfer.

Cost: every call evaluates the model `num_samples` times (vectorised with `jax.vmap`, or
`draws_per_batch` at a time with `lax.map` to bound memory), so an attack's gradient
evaluations count `num_samples` passes each.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from invjax._src import checks
from invjax.attacks import inputs
from invjax.attacks.result import AttackResult

RandomLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
AVERAGES = ("logits", "probs")


def expectation_logits(random_logits_fn: RandomLogitsFn, *, num_samples: int, key: jax.Array,
                       average: str = "logits", draws_per_batch: Optional[int] = None
                       ) -> inputs.LogitsFn:
  """The deterministic `logits_fn(x)` of a randomised model averaged over fixed draws.

  Args:
    random_logits_fn: `(x [batch, ...], key) -> logits [batch, classes]`, jit-able and
      vmap-able over `key`.
    num_samples: draws averaged (a Python int >= 1).
    key: PRNG key the `num_samples` draw keys are split from, once.
    average: "logits" (mean logits) or "probs" (log of the mean softmax).
    draws_per_batch: evaluate this many draws at once (`lax.map`); None: all (`jax.vmap`).

  Returns:
    `logits_fn(x) -> [batch, classes]`; the same function object should be passed to every
    attack so that each compiles once.
  """
  inputs.check_positive_int(num_samples, "num_samples")
  if draws_per_batch is not None:
    inputs.check_positive_int(draws_per_batch, "draws_per_batch")
  if average not in AVERAGES:
    raise checks.InvjaxError(f"average must be one of {AVERAGES}, got {average!r}")
  if not callable(random_logits_fn):
    raise checks.InvjaxError("random_logits_fn must be callable (x, key) -> logits")
  keys = jax.random.split(key, num_samples)

  def logits_fn(x: jax.Array) -> jax.Array:
    one = lambda k: random_logits_fn(x, k)
    if draws_per_batch is None:
      draws = jax.vmap(one)(keys)
    else:
      draws = lax.map(one, keys, batch_size=min(draws_per_batch, num_samples))
    if average == "logits":
      return jnp.mean(draws, axis=0)
    log_p = jax.nn.log_softmax(draws, axis=-1)
    return jax.nn.logsumexp(log_p, axis=0) - jnp.log(float(num_samples))

  return logits_fn


def single_draw(random_logits_fn: RandomLogitsFn, key: jax.Array) -> inputs.LogitsFn:
  """`x -> random_logits_fn(x, key)`: the model at one fixed draw (the non-EoT baseline)."""
  return lambda x: random_logits_fn(x, key)


def eot_attack(attack: Callable[..., AttackResult], random_logits_fn: RandomLogitsFn, x, y, *,
               key: jax.Array, num_samples: int, average: str = "logits",
               draws_per_batch: Optional[int] = None, **budget) -> AttackResult:
  """`attack` on the expectation of `random_logits_fn` over `num_samples` draws.

  The key is split into the draws' key and the attack's key. `result.success` is re-checked on
  the averaged model; `num_grad_evals` / `num_forward_evals` are multiplied by `num_samples`
  (each evaluation of the average runs the model that many times).
  """
  k_draws, k_attack = jax.random.split(key)
  logits_fn = expectation_logits(random_logits_fn, num_samples=num_samples, key=k_draws,
                                 average=average, draws_per_batch=draws_per_batch)
  result = attack(logits_fn, x, y, key=k_attack, **budget)
  return result.replace(num_grad_evals=result.num_grad_evals * num_samples,
                        num_forward_evals=result.num_forward_evals * num_samples)
