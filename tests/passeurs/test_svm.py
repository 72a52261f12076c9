"""Tests of invjax.passeurs.svm against LIBLINEAR (liblinear-official) and closed forms.

All tests use 300 x 20 feature matrices so that few XLA programs compile: the Newton and the
dual CD programs for 3 classes, 2 classes and 10 classes (Newton), plus one jitted variant.
`XS`, `YS` is a linearly separable problem (the optimal SVMs classify every training sample
correctly, ~30-40 margin violators per class), `X3`, `Y3` a non-separable one.
"""
import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from liblinear import liblinearutil

from invjax._src.checks import InvjaxError
from invjax.passeurs import svm
from invjax.passeurs import svm_dual_cd
from invjax.passeurs import svm_newton

N, D = 300, 20


def _data(num_classes, seed=0, strength=0.6):
  """Non-negative features (ReLU of a class signal plus noise); separable for strength 1.5."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, N).astype(np.int32)
  means = rng.normal(size=(num_classes, D))
  x = np.maximum(strength * means[y] + rng.normal(size=(N, D)), 0.0)
  return (0.3 * x).astype(np.float32), y


X3, Y3 = _data(3)
Y2 = (Y3 == 1).astype(np.int32)        # two classes, unbalanced
X10, Y10 = _data(10, seed=1)
XS, YS = _data(3, seed=2, strength=1.5)


def _numpy_objective(w, b, x, y, loss, c=1.0):
  """LIBLINEAR's primal per class in float64, independent of the library."""
  w, b, x = np.asarray(w, np.float64), np.asarray(b, np.float64), np.asarray(x, np.float64)
  sign = np.where(y[:, None] == np.arange(w.shape[0]), 1.0, -1.0)
  h = np.maximum(1.0 - sign * (x @ w.T + b), 0.0)
  h = h * h if loss == "squared_hinge" else h
  return 0.5 * (np.sum(w * w, 1) + b * b) + c * h.sum(0)


@functools.lru_cache(maxsize=None)
def _liblinear(which, loss, bias, eps, solver=None):
  """LIBLINEAR's (w [K, d], b [K]) in our class order, from its decision functions.

  `solver`: LIBLINEAR's -s (default 1 for the squared hinge, 3 for the hinge)."""
  x, y = _data_for(which)
  solver = solver or {"squared_hinge": 1, "hinge": 3}[loss]
  b_flag = 1 if bias else -1
  prob = liblinearutil.problem(y.astype(np.float64), x.astype(np.float64), bias=b_flag)
  param = liblinearutil.parameter(f"-s {solver} -c 1 -B {b_flag} -e {eps} -q")
  model = liblinearutil.train(prob, param)
  labels = [int(l) for l in model.get_labels()]
  k = int(y.max()) + 1
  w, b = np.zeros((k, D)), np.zeros(k)
  if len(labels) == 2:     # LIBLINEAR's single binary model scores its first label
    coef, bb = model.get_decfun(0)
    w[labels[0]], b[labels[0]] = coef, bb
    w[labels[1]], b[labels[1]] = -np.asarray(coef), -bb
  else:
    for i, lab in enumerate(labels):
      coef, bb = model.get_decfun(i)
      w[lab], b[lab] = coef, bb
  return w, b


def _data_for(which):
  return {"3": (X3, Y3), "2": (X3, Y2), "10": (X10, Y10), "sep": (XS, YS)}[which]


@pytest.mark.parametrize("which", ["3", "2"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("loss", ["squared_hinge", "hinge"])
def test_matches_liblinear(loss, bias, which):
  x, y = _data_for(which)
  params, info = svm.fit(x, y, loss=loss, bias=bias, return_info=True)
  assert params.w.shape == (int(y.max()) + 1, D) and params.b.shape == (int(y.max()) + 1,)
  assert bool(np.all(info.converged))
  if not bias:
    np.testing.assert_array_equal(params.b, 0.0)
  w_ref, b_ref = _liblinear(which, loss, bias, 1e-5)
  ours = _numpy_objective(params.w, params.b, x, y, loss)
  ref = _numpy_objective(w_ref, b_ref, x, y, loss)
  np.testing.assert_array_less(np.abs(ours - ref) / ref, 1e-3)
  pred_ref = np.argmax(x @ w_ref.T + b_ref, axis=1)
  assert np.mean(np.asarray(svm.predict(params, x)) == pred_ref) >= 0.995
  # Our own objective function agrees with the independent float64 one.
  np.testing.assert_allclose(svm.primal_objective(params, x, y, loss=loss), ours, rtol=1e-5)


def test_ten_classes_matches_liblinear():
  params = svm.fit(X10, Y10)
  w_ref, b_ref = _liblinear("10", "squared_hinge", False, 1e-5)
  ours = _numpy_objective(params.w, params.b, X10, Y10, "squared_hinge")
  ref = _numpy_objective(w_ref, b_ref, X10, Y10, "squared_hinge")
  np.testing.assert_array_less(np.abs(ours - ref) / ref, 1e-4)
  np.testing.assert_allclose(params.w, w_ref, atol=2e-3 * np.abs(w_ref).max())
  assert np.mean(np.asarray(svm.predict(params, X10)) == np.argmax(X10 @ w_ref.T, 1)) >= 0.995


def test_at_least_as_good_as_liblinear_defaults():
  """LIBLINEAR `-s 1 -c 1` with its default -e 0.1 stops earlier: we reach a lower objective."""
  params = svm.fit(X3, Y3)
  w_ref, b_ref = _liblinear("3", "squared_hinge", False, 0.1)
  ours = _numpy_objective(params.w, params.b, X3, Y3, "squared_hinge")
  ref = _numpy_objective(w_ref, b_ref, X3, Y3, "squared_hinge")
  assert np.all(ours <= ref * (1 + 1e-6))
  assert np.mean(np.asarray(svm.predict(params, X3)) == np.argmax(X3 @ w_ref.T, 1)) >= 0.99


def test_binary_is_one_model():
  params = svm.fit(X3, Y2, bias=True)
  np.testing.assert_allclose(params.w[0], -params.w[1])
  np.testing.assert_allclose(params.b[0], -params.b[1])


@pytest.mark.parametrize("loss,solver,rtol", [("squared_hinge", "newton", 1e-4),
                                              ("squared_hinge", "dual_cd", 1e-3),
                                              ("hinge", "dual_cd", 1e-3)])
def test_duality_gap_vanishes(loss, solver, rtol):
  params, info = svm.fit(X3, Y3, loss=loss, solver=solver, bias=True, return_info=True)
  primal = svm.primal_objective(params, X3, Y3, loss=loss)
  gap = svm.duality_gap(params, info.alpha, X3, Y3, loss=loss, bias=True)
  assert np.all(np.asarray(gap) >= -1e-4 * np.asarray(primal))      # weak duality
  np.testing.assert_array_less(np.asarray(gap) / np.asarray(primal), rtol)
  alpha = np.asarray(info.alpha)
  assert alpha.min() >= 0 and (loss == "squared_hinge" or alpha.max() <= 1.0 + 1e-6)


def test_objectives_closed_form():
  """At w = 0 every margin is 0: P = C n for both losses; D(0) = 0, so the gap is C n."""
  zero = svm.SVMParams(jnp.zeros((3, D)), jnp.zeros(3))
  for loss in svm.LOSSES:
    np.testing.assert_allclose(svm.primal_objective(zero, X3, Y3, C=2.0, loss=loss), 2.0 * N)
    np.testing.assert_allclose(
        svm.duality_gap(zero, jnp.zeros((3, N)), X3, Y3, C=2.0, loss=loss), 2.0 * N)


def test_decision_function_and_predict():
  params = svm.fit(X3, Y3, bias=True)
  scores = np.asarray(X3, np.float64) @ np.asarray(params.w, np.float64).T + np.asarray(params.b)
  np.testing.assert_allclose(svm.decision_function(params, X3), scores, rtol=1e-5, atol=1e-5)
  pred = svm.predict(params, X3)
  assert pred.dtype == jnp.int32
  np.testing.assert_array_equal(pred, np.argmax(scores, 1))
  # Params also read like a mapping (as the poisoning code expects).
  assert params["w"] is params.w and params.get("b") is params.b and params.get("x") is None


def test_warm_start_and_dual_cd_agree():
  params, info = svm.fit(X3, Y3, return_info=True)
  warm, winfo = svm.fit(X3, Y3, init=params, return_info=True)
  assert int(np.max(winfo.iterations)) <= 1 < int(np.max(info.iterations))
  dcd = svm.fit(X3, Y3, solver="dual_cd", tol=1e-4)
  np.testing.assert_allclose(dcd.w, params.w, atol=1e-3 * float(np.abs(params.w).max()))
  np.testing.assert_allclose(warm.w, params.w, atol=1e-3 * float(np.abs(params.w).max()))


def test_not_converged_warns():
  with pytest.warns(RuntimeWarning, match="did not reach"):
    _, info = svm.fit(X3, Y3, max_iter=1, tol=1e-7, return_info=True)
  assert not bool(np.all(info.converged))


# ----------------------------------------------------------------------------- stopping rules


def _numpy_scaled_gradient(w, b, x, y, bias, c=1.0):
  """LIBLINEAR -s 2's ||grad P(w)|| / (max(min(pos, neg), 1) / n * ||grad P(0)||), float64."""
  w, b, x = np.asarray(w, np.float64), np.asarray(b, np.float64), np.asarray(x, np.float64)
  sign = np.where(y[:, None] == np.arange(w.shape[0]), 1.0, -1.0)       # [n, K]
  z = x @ w.T + b
  r = np.where(sign * z < 1, z - sign, 0.0)
  gw = w + 2 * c * r.T @ x
  gb = (b + 2 * c * r.sum(0)) if bias else np.zeros_like(b)
  g0 = 2 * c * np.sqrt(np.sum((sign.T @ x) ** 2, 1) + (sign.sum(0) ** 2 if bias else 0.0))
  pos = (sign > 0).sum(0)
  scale = np.maximum(np.minimum(pos, len(y) - pos), 1) / len(y)
  return np.sqrt(np.sum(gw * gw, 1) + gb * gb) / (scale * g0)


def _numpy_dual_violation(alpha, w, b, x, y, bias, c=1.0):
  """max(PG, 0) - min(PG, 0) over all samples of the squared-hinge dual at (alpha, w), float64."""
  w, b, x = np.asarray(w, np.float64), np.asarray(b, np.float64), np.asarray(x, np.float64)
  alpha = np.asarray(alpha, np.float64)
  sign = np.where(y[:, None] == np.arange(w.shape[0]), 1.0, -1.0)
  g = sign * (x @ w.T + (b if bias else 0.0)) - 1 + alpha.T / (2 * c)
  pg = np.where(alpha.T <= 0, np.minimum(g, 0.0), g)
  return np.maximum(pg.max(0), 0.0) - np.minimum(pg.min(0), 0.0)


@pytest.mark.parametrize("which", ["sep", "3"])
@pytest.mark.parametrize("solver", ["newton", "dual_cd"])
@pytest.mark.parametrize("bias", [False, True])
def test_tight_tol_reaches_liblinear_optimum(which, solver, bias):
  """With a tight tol both solvers reach the optimum of LIBLINEAR -s 2 -e 1e-8 (the reference),
  on a separable and on a non-separable problem, to ~1e-6 relative (float32)."""
  x, y = _data_for(which)
  params, info = svm.fit(x, y, solver=solver, tol=1e-4, bias=bias, return_info=True)
  assert bool(np.all(info.converged))
  w_ref, b_ref = _liblinear(which, "squared_hinge", bias, 1e-8, solver=2)
  ref = _numpy_objective(w_ref, b_ref, x, y, "squared_hinge")
  if which == "sep":     # the problem is separable: the optimal SVMs make no training error
    sign = np.where(y[:, None] == np.arange(3), 1.0, -1.0)
    assert np.all(sign * (x @ w_ref.T + b_ref) > 0)
  ours = _numpy_objective(params.w, params.b, x, y, "squared_hinge")
  np.testing.assert_array_less(np.abs(ours - ref) / ref, 1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_newton_stops_on_liblinear_gradient_rule(bias):
  """converged <=> ||grad P|| <= tol * max(min(pos, neg), 1) / n * ||grad P(0)||, checked in float64;
  the reported residual is that ratio."""
  params, info = svm.fit(XS, YS, bias=bias, return_info=True)
  residual = _numpy_scaled_gradient(params.w, params.b, XS, YS, bias)
  tol = svm.DEFAULT_TOL["newton"]
  assert bool(np.all(info.converged))
  np.testing.assert_array_less(residual, tol * 1.01)
  np.testing.assert_allclose(info.residual, residual, rtol=0.02)
  # One Newton step is not enough: not converged, and the gradient is really above the rule.
  with pytest.warns(RuntimeWarning, match="did not reach"):
    params, info = svm.fit(XS, YS, bias=bias, max_iter=1, return_info=True)
  residual = _numpy_scaled_gradient(params.w, params.b, XS, YS, bias)
  assert not bool(np.any(info.converged))
  assert np.all(residual > tol)
  np.testing.assert_allclose(info.residual, residual, rtol=0.02)
  assert np.all(np.asarray(info.iterations) == 1)


def test_newton_residual_cg_rule_and_jacobi_preconditioner():
  """The non-default CG rule (||H s + g|| <= 0.1 ||g||, TRON's) and the plain Jacobi
  preconditioner (the former defaults) also converge to the reference optimum."""
  xb, valid = svm_newton.to_blocks(jnp.asarray(XS), 128)
  yb, _ = svm_newton.to_blocks(jnp.where(YS[:, None] == np.arange(3), 1.0, -1.0), 128)
  res = jax.jit(lambda xb, yb: svm_newton.newton_squared_hinge(
      xb, valid, yb, jnp.zeros((3, D)), jnp.zeros(3), c=1.0, fit_bias=False, eps=1e-4,
      max_iter=100, cg_rule="residual", cg_eps=0.1, precond_mix=1.0))(xb, yb)
  assert bool(np.all(res.converged))
  np.testing.assert_array_less(_numpy_scaled_gradient(res.w, res.b, XS, YS, False), 1e-4 * 1.01)
  w_ref, b_ref = _liblinear("sep", "squared_hinge", False, 1e-8, solver=2)
  ours = _numpy_objective(res.w, res.b, XS, YS, "squared_hinge")
  ref = _numpy_objective(w_ref, b_ref, XS, YS, "squared_hinge")
  np.testing.assert_array_less(np.abs(ours - ref) / ref, 1e-5)


def test_dual_cd_shrinking():
  """Shrinking visits fewer coordinates than full epochs, yet `converged` holds on ALL samples:
  when the active set meets the rule, LIBLINEAR re-checks on a full epoch (without that check,
  the violation at exit exceeds tol: 1.26 tol at tol = 0.01 here), and the solution equals the
  one without shrinking."""
  for tol in (1e-2, 1e-3):
    params, info = svm.fit(XS, YS, solver="dual_cd", tol=tol, return_info=True)
    assert bool(np.all(info.converged))
    visits, epochs = np.asarray(info.inner_iterations), np.asarray(info.iterations)
    assert np.all(visits < 0.7 * epochs * N)          # shrinking skipped > 30% of the visits
    np.testing.assert_array_less(np.asarray(info.residual), tol)
    # The dual violation at the returned point (alpha, w at exit), over all samples.
    violation = _numpy_dual_violation(info.alpha, params.w, params.b, XS, YS, False)
    np.testing.assert_array_less(violation, tol)
  # Same problem without shrinking (the solver called directly): same objective.
  y = jnp.where(YS[None, :] == jnp.arange(3)[:, None], 1.0, -1.0)
  x = jnp.asarray(XS)
  solve = lambda yy: svm_dual_cd.dual_cd(
      x, jnp.sum(x * x, 1), yy, jnp.zeros_like(yy), c=1.0, squared=True, fit_bias=0.0, tol=tol,
      max_iter=1000, key=jax.random.PRNGKey(0), shrinking=False)
  full = jax.jit(lambda y: jax.lax.map(solve, y))(y)
  assert bool(np.all(full.converged))
  np.testing.assert_array_equal(full.inner_iterations, full.iterations * N)
  ref = _numpy_objective(full.w, full.b, XS, YS, "squared_hinge")
  ours = _numpy_objective(params.w, params.b, XS, YS, "squared_hinge")
  np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_dual_cd_not_converged():
  with pytest.warns(RuntimeWarning, match="did not reach"):
    params, info = svm.fit(XS, YS, solver="dual_cd", max_iter=3, return_info=True)
  assert not bool(np.any(info.converged))
  assert np.all(np.asarray(info.iterations) == 3)
  violation = _numpy_dual_violation(info.alpha, params.w, params.b, XS, YS, False)
  assert np.all(violation > svm.DEFAULT_TOL["dual_cd"])


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit(self):
    fit = self.variant(lambda x, y: svm.fit(x, y, num_classes=3, bias=True))
    params = fit(jnp.asarray(X3), jnp.asarray(Y3))
    w_ref, b_ref = _liblinear("3", "squared_hinge", True, 1e-5)
    ours = _numpy_objective(params.w, params.b, X3, Y3, "squared_hinge")
    ref = _numpy_objective(w_ref, b_ref, X3, Y3, "squared_hinge")
    np.testing.assert_array_less(np.abs(ours - ref) / ref, 1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=np.where(np.arange(N * D).reshape(N, D) == 7, np.nan, X3)), "NaN"),
    (dict(features=np.where(np.arange(N * D).reshape(N, D) == 7, np.inf, X3)), "infinite"),
    (dict(features=X3[:, 0]), "rank 2"),
    (dict(labels=Y3[:-1]), r"labels must have shape \(300,\)"),
    (dict(labels=Y3.astype(np.float32)), "integer"),
    (dict(labels=np.zeros(N, np.int32)), "at least 2 classes"),
    (dict(labels=Y3 - 1), "labels must lie in"),
    (dict(C=0.0), "C must be > 0"),
    (dict(C=-1.0), "C must be > 0"),
    (dict(loss="log"), "loss must be one of"),
    (dict(loss="hinge", solver="newton"), "not differentiable"),
    (dict(solver="sgd"), "solver must be one of"),
    (dict(max_iter=0), "max_iter"),
])
def test_bad_inputs(kwargs, match):
  args = dict(features=X3, labels=Y3)
  args.update(kwargs)
  with pytest.raises(InvjaxError, match=match):
    svm.fit(args.pop("features"), args.pop("labels"), **args)


def test_decision_function_checks_width():
  params = svm.SVMParams(jnp.zeros((3, D)), jnp.zeros(3))
  with pytest.raises(InvjaxError, match="columns"):
    svm.decision_function(params, X3[:, :5])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert svm.predict(params, X3).shape == (N,)


def test_label_range_errors_say_what_is_wrong():
  """A negative label is named as such (the minimum found), a label >= num_classes by its
  maximum; neither prints an empty interval like "[0)"."""
  with pytest.raises(InvjaxError) as e:
    svm.fit(X3, Y3 - 1)
  assert str(e.value) == ("labels must lie in [0, num_classes) (non-negative class ids), "
                          "got min -1")
  with pytest.raises(InvjaxError) as e:
    svm.fit(X3, Y3, num_classes=2)
  assert str(e.value) == "labels must lie in [0, 2) (num_classes=2), got max 2"
  with pytest.raises(InvjaxError, match=r"\[0, 3\) \(non-negative class ids\), got min -2"):
    svm.fit(X3, np.where(np.arange(N) == 5, -2, Y3), num_classes=3)


def test_newton_rejects_an_unknown_cg_rule():
  xb, valid = svm_newton.to_blocks(jnp.asarray(XS), 128)
  yb, _ = svm_newton.to_blocks(jnp.where(YS[:, None] == np.arange(3), 1.0, -1.0), 128)
  with pytest.raises(InvjaxError, match="cg_rule must be 'quadratic' or 'residual'"):
    svm_newton.newton_squared_hinge(xb, valid, yb, jnp.zeros((3, D)), jnp.zeros(3), c=1.0,
                                    fit_bias=False, eps=1e-3, max_iter=10, cg_rule="exact")
