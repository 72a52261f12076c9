"""Half-spaces of a linear(ised) head and the minimal-norm steps across them.

"Class t beats class y by kappa" is, for a head that is linear in its input
(`logits = z @ A + b`, or any head linearised at the current point), the
half-space `(A[:, t] - A[:, y]) . d >= kappa - (logit_t - logit_y)` in the step d.
An untargeted attack needs ANY of the K - 1 half-spaces (their union: the
cheapest one is exact); a targeted attack needs ALL of `logit_t - logit_j >= kappa`
(their intersection: a K-dimensional dual QP). The same algebra serves steps in
latent space (rows `A[:, j]`) and in image space (rows `J^T A[:, j]`).

Batch-first: rows [B, C, P], right-hand sides [B, C], active masks bool [B, C].
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from invjax._src.geometry import TINY
from invjax.attacks import functional
from invjax.attacks import result as result_lib

Array = jax.Array


def dual_norm(rows: Array, norm: str) -> Array:
  """The dual norm of the step's norm over the last axis: ||r||_2 (L2), ||r||_1 (L_inf)."""
  if norm == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(rows), axis=-1))
  return jnp.sum(jnp.abs(rows), axis=-1)


def single_row_step(row: Array, c: Array, norm: str) -> Array:
  """Minimal-norm d with `row . d >= c` (c <= 0 gives d = 0). row [B, P], c [B] -> [B, P]."""
  c = jnp.maximum(c, 0.0)
  if norm == "l2":
    denom = jnp.maximum(jnp.sum(jnp.square(row), axis=-1), TINY)
    return (c / denom)[:, None] * row
  denom = jnp.maximum(dual_norm(row, "linf"), TINY)
  return (c / denom)[:, None] * jnp.sign(row)


def qp_dual(rows: Array, c: Array, active: Array, num_sweeps: int) -> Array:
  """Minimal-L2 d with `rows_i . d >= c_i` for every active i (dual coordinate descent).

  Solves max_{lambda >= 0} lambda.c - |rows^T lambda|^2 / 2 on the [C, C] Gram
  matrix and returns d = rows^T lambda.

  Args:
    rows: [B, C, P] constraint normals.
    c: [B, C] right-hand sides.
    active: bool [B, C]; inactive constraints are ignored.
    num_sweeps: coordinate-descent sweeps over the C constraints.

  Returns:
    d: [B, P].
  """
  gram = jnp.einsum("bip,bjp->bij", rows, rows)
  num_c = c.shape[1]
  diag = jnp.where(active, jnp.diagonal(gram, axis1=1, axis2=2), 1.0)
  diag = jnp.maximum(diag, TINY)
  c = jnp.where(active, c, 0.0)

  def coord(i, lam):
    g_i = c[:, i] - jnp.einsum("bj,bj->b", gram[:, i, :], lam)
    new = jnp.maximum(lam[:, i] + g_i / diag[:, i], 0.0)
    return lam.at[:, i].set(jnp.where(active[:, i], new, 0.0))

  def sweep(_, lam):
    return jax.lax.fori_loop(0, num_c, coord, lam)

  lam = jax.lax.fori_loop(0, num_sweeps, sweep, jnp.zeros_like(c))
  return jnp.einsum("bc,bcp->bp", lam, rows)


def min_norm_step(rows: Array, c: Array, active: Array, *, combine: str, norm: str,
                  num_sweeps: int) -> Array:
  """Smallest step d (in `norm`) with `rows_i . d >= c_i` for ANY / ALL active i.

  Args:
    rows: [B, C, P]; c: [B, C]; active: bool [B, C].
    combine: "any" (union of half-spaces: exact, the cheapest one) or "all"
      (intersection: exact dual QP for L2; for L_inf the most binding half-space,
      the other ones being fixed by re-linearising iterations).
    norm: "l2" or "linf".
    num_sweeps: QP sweeps (combine="all", norm="l2").

  Returns:
    d: [B, P].
  """
  if combine == "all" and norm == "l2":
    return qp_dual(rows, c, active, num_sweeps)
  cost = jnp.maximum(c, 0.0) / jnp.maximum(dual_norm(rows, norm), TINY)
  if combine == "any":
    j = jnp.argmin(jnp.where(active, cost, jnp.inf), axis=1)
  else:
    j = jnp.argmax(jnp.where(active, cost, -jnp.inf), axis=1)
  row = jnp.take_along_axis(rows, j[:, None, None], axis=1)[:, 0]
  cj = jnp.take_along_axis(c, j[:, None], axis=1)[:, 0]
  return single_row_step(row, cj, norm)


def linearize_head(head_params, head_fn, z: Array) -> Tuple[Array, Array]:
  """Logits [B, K] and the local head Jacobian A [B, D, K] (exact for a linear head).

  `head_fn=None` means `head_params = (A [D, K], b [K])`; else `head_fn(head_params, z)`
  gives the logits and its K vector-Jacobian products the rows.
  """
  if head_fn is None:
    a = head_params[0]
    logits = functional.apply_head(head_params, None, z)
    return logits, jnp.broadcast_to(a, (z.shape[0],) + a.shape)
  logits, vjp = jax.vjp(lambda zz: head_fn(head_params, zz), z)
  eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
  grads = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(eye)  # [K, B, D]
  return logits, jnp.moveaxis(grads, 0, -1)


def constraints(logits: Array, a: Array, y: Array, target: Optional[Array], kappa):
  """Rows (gradients in z) [B, K, D], needed increase [B, K] and the active mask [B, K].

  Untargeted: row j is grad(logit_j - logit_y), need kappa - (logit_j - logit_y), j != y,
  combined with "any". Targeted: row j is grad(logit_t - logit_j), need
  kappa - (logit_t - logit_j), j != t, combined with "all".
  """
  num_classes = logits.shape[-1]
  rows_k = jnp.moveaxis(a, -1, 1)  # [B, K, D]
  ref = y if target is None else target
  a_ref = jnp.take_along_axis(rows_k, ref[:, None, None], axis=1)  # [B, 1, D]
  l_ref = jnp.take_along_axis(logits, ref[:, None], axis=1)  # [B, 1]
  active = jnp.arange(num_classes)[None, :] != ref[:, None]
  if target is None:
    return rows_k - a_ref, kappa - (logits - l_ref), active
  return a_ref - rows_k, kappa - (l_ref - logits), active


def combine_for(target: Optional[Array]) -> str:
  """How the constraints of `constraints` combine: "any" untargeted, "all" targeted."""
  return "any" if target is None else "all"


def is_adversarial(logits: Array, y: Array, target: Optional[Array]) -> Array:
  """bool [B]: the prediction left y (untargeted) or reached the target."""
  if target is None:
    return result_lib.is_adversarial(logits, y)
  return result_lib.is_adversarial(logits, target, targeted=True)
