"""Correlated Gaussians with closed-form mutual information, shared by the estimator tests."""
import numpy as np


def gaussians(seed, n, d, rho):
  """x, y in R^d with corr(x_i, y_i) = rho, independent across i: I = -d/2 log(1 - rho^2)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal((n, d))
  return x.astype(np.float32), y.astype(np.float32), -0.5 * d * np.log(1 - rho ** 2)
