"""Shared test helpers: a layer's log-det against slogdet of its dense Jacobian and its inverse;
the `ConvergenceWarning`s a call issues."""
import warnings

import jax
import numpy as np

from invjax.flows.fixed_point import ConvergenceWarning


def check_log_det_and_inverse(layer, variables, x, *, log_det_atol):
  """Per example, `log_det` = slogdet(jacfwd) (float64 numpy; rtol 1e-4, atol `log_det_atol`);
  `inverse(y)` returns `x` (atol 1e-5) and `-log_det` (rtol 1e-6). Returns `(y, log_det)`."""
  y, ld = layer.apply(variables, x)
  event = x.shape[1:]
  jac = jax.jit(jax.jacfwd(
      lambda v: layer.apply(variables, v.reshape((1,) + event))[0].reshape(-1)))
  for b in range(x.shape[0]):
    sign, ref = np.linalg.slogdet(np.asarray(jac(x[b].reshape(-1)), np.float64))
    assert sign != 0
    np.testing.assert_allclose(float(ld[b]), ref, rtol=1e-4, atol=log_det_atol)
  xr, ldi = layer.apply(variables, y, method="inverse")
  np.testing.assert_allclose(np.asarray(xr), np.asarray(x), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ldi), -np.asarray(ld), rtol=1e-6)
  return y, ld


def convergence_warnings(fn):
  """Runs `fn()` (and waits for its host callbacks); returns the ConvergenceWarnings it issued."""
  with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    jax.block_until_ready(fn())
    jax.effects_barrier()
  return [w for w in rec if issubclass(w.category, ConvergenceWarning)]
