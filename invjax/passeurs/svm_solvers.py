"""Solvers for the L2-regularised linear SVM of LIBLINEAR, one binary problem at a time.

Each solver minimises, for one binary problem (labels y_i in {-1, +1}),

    P(w, b) = 0.5 * (||w||^2 + b^2) + C * sum_i loss(y_i * (w . x_i + b))

with loss(m) = max(0, 1 - m)^2 (squared hinge, LIBLINEAR `-s 1`/`-s 2`) or max(0, 1 - m)
(hinge, `-s 3`). `b` is LIBLINEAR's `-B 1` bias: a constant feature 1, regularised like w; with
`fit_bias=False` it stays 0. The Newton solver is written batched over classes (every pass over
the features is a `[B, d] x [d, classes]` product per row block; its `while_loop` runs until the
slowest class is done, freezing the others); dual CD is written for one class and run class after
class (`lax.map`: each class stops on its own, and its loop indexes single rows).

Two solvers, one module each; this module holds their common result type:

* `svm_newton.newton_squared_hinge`: primal truncated Newton with preconditioned conjugate gradients
  (LIBLINEAR's `-s 2`, newton.cpp) and an exact line search on the piecewise quadratic objective.
  Its work is products with the features, fused per row block (one pass over the features per CG
  iteration), which suits CPUs (memory bound) and accelerators alike: the default for the
  squared hinge. Stops on LIBLINEAR's `-s 2` rule ||grad P(w)|| <= eps * max(min(#pos, #neg), 1)
  / n * ||grad P(0)||. Fast when the data are not separable; on (nearly) linearly separable data
  it may need many Newton steps, each a full pass per CG iteration, to pin P (see `svm.py`).
  (A Gram-matrix preconditioner was tried and did not pay for its eigendecomposition.)
* `svm_dual_cd.dual_cd`: dual coordinate descent with shrinking (Hsieh et al. 2008, LIBLINEAR's `-s 1` and
  `-s 3` algorithm, `solve_l2r_l1l2_svc`): a loop over the active samples in a random order per
  epoch. Stops on LIBLINEAR's rule: over an epoch on all samples, max PG - min PG <= tol and
  |max PG|, |min PG| <= tol. Needed for the hinge loss (non-differentiable primal); for the
  squared hinge it is the fast choice on separable data, where few samples stay active.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BinaryResult(NamedTuple):
  """Result of one binary solve (batched over classes: every leaf gets a leading class axis).

  Attributes:
    w: [d] weights.
    b: [] bias (0 when no bias is fitted).
    alpha: [n] dual variables (for the Newton solver alpha_i = 2C max(0, 1 - y_i f(x_i)), the
      dual point that the optimal primal determines).
    iterations: [] Newton iterations or dual CD epochs.
    inner_iterations: [] total conjugate-gradient iterations (Newton) or coordinate updates
      visited (dual CD; without shrinking, epochs * n).
    residual: [] the stopping quantity at exit: ||grad P|| / (max(min(pos, neg), 1) / n *
      ||grad P(0)||) (Newton), max(PGmax, 0) - min(PGmin, 0) of the last epoch (dual CD).
    converged: [] bool, the stopping rule holds (residual <= eps / tol).
  """
  w: jax.Array
  b: jax.Array
  alpha: jax.Array
  iterations: jax.Array
  inner_iterations: jax.Array
  residual: jax.Array
  converged: jax.Array


def dot(x, v):
  """`jnp.dot` at full float32 precision (the solvers' products with the features)."""
  return jnp.dot(x, v, precision=jax.lax.Precision.HIGHEST)
