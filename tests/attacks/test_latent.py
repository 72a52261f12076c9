"""Latent-inversion attacks, checked against closed forms and scipy QPs on linear invertible maps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from invjax.attacks import latent
from invjax._src.checks import InvjaxError

D, K, B = 8, 4, 6
KAPPA = 0.1


def _linear_problem(seed=0):
  rng = np.random.default_rng(seed)
  m = np.eye(D) + 0.3 * rng.standard_normal((D, D))  # well conditioned, not orthogonal
  a = rng.standard_normal((D, K))
  b = rng.standard_normal(K)
  x = rng.uniform(0.4, 0.6, (B, D))
  y = np.argmax(x @ m.T @ a + b, 1).astype(np.int32)
  m32, minv32 = m.astype(np.float32), np.linalg.inv(m).astype(np.float32)
  enc = lambda v: v @ m32.T
  dec = lambda z: z @ minv32.T
  return m, a, b, x, y, enc, dec, (a.astype(np.float32), b.astype(np.float32))


PROBLEM = _linear_problem()


def _untargeted_reference(space, m, a, b, x, y):
  """Minimal-L2 point: latent projection (space="z") or image projection along M^T a (space="x")."""
  out = []
  for i in range(B):
    z = m @ x[i]
    cands = []
    for t in range(K):
      if t == y[i]:
        continue
      w = a[:, t] - a[:, y[i]]
      need = b[y[i]] - b[t] + KAPPA - w @ z
      g = w if space == "z" else m.T @ w
      step = max(need, 0.0) / (g @ g) * g
      cands.append((np.linalg.norm(step), (z if space == "z" else x[i]) + step))
    out.append(min(cands, key=lambda c: c[0])[1])
  return np.array(out)


def _targeted_qp(space, m, a, b, x, tgt):
  """scipy SLSQP: min ||v - v0||^2 s.t. logit_t - logit_j >= kappa, in latent or image space."""
  out = []
  for i in range(B):
    v0 = m @ x[i] if space == "z" else x[i]
    to_z = np.eye(D) if space == "z" else m
    rows = np.stack([(a[:, tgt[i]] - a[:, j]) @ to_z for j in range(K) if j != tgt[i]])
    rhs = np.array([b[j] - b[tgt[i]] + KAPPA for j in range(K) if j != tgt[i]])
    cons = [{"type": "ineq", "fun": lambda v: rows @ v - rhs, "jac": lambda v: rows}]
    sol = optimize.minimize(lambda v: np.sum((v - v0) ** 2), v0, jac=lambda v: 2 * (v - v0),
                            constraints=cons, method="SLSQP",
                            options=dict(ftol=1e-14, maxiter=1000))
    assert sol.success, sol.message
    out.append(sol.x)
  return np.array(out)


def test_closed_form_is_the_minimal_latent_point():
  m, a, b, x, y, enc, dec, head = PROBLEM
  res, info = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0,
                                   clip=False, return_info=True, inverse_lipschitz=float(
                                       np.linalg.norm(np.linalg.inv(m), 2)), unroll=False)
  np.testing.assert_allclose(info.z_adv, _untargeted_reference("z", m, a, b, x, y), atol=2e-5)
  assert bool(res.success.all())
  # ||x' - x|| <= Lip(M^-1) ||z' - z||.
  assert np.all(np.asarray(res.l2) <= np.asarray(info.image_l2_bound) * (1 + 1e-5))
  # Every example succeeds at the minimal step: the line search tries no scale.
  assert int(res.num_inverse_evals) == 1 and int(res.num_forward_evals) == 2
  plain = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0, clip=False,
                               step_scales=())
  assert int(plain.num_inverse_evals) == 1 and int(plain.num_forward_evals) == 2
  np.testing.assert_allclose(plain.x_adv, res.x_adv, atol=1e-6)


def test_closed_form_line_search_makes_up_for_clipping():
  # Identity flow, two classes, logit_1 - logit_0 = x_0 + x_1 - 1.7: x = (0.99, 0.5) needs
  # +0.21 along (1, 1). The minimal latent step (0.105, 0.105) is clipped to (1.0, 0.605),
  # which only gains 0.115; twice the step, clipped, is (1.0, 0.71): exactly on the boundary
  # plus 0.01. Scales 1.1 .. 1.5 stay short, so the line search must return the 2x point.
  ident = lambda v: v
  head = (np.array([[0.0, 1.0], [0.0, 1.0]], np.float32), np.array([0.0, -1.7], np.float32))
  x = np.array([[0.99, 0.5]], np.float32)
  y = np.array([0], np.int32)
  short = latent.latent_attack(ident, ident, head, x, y, overshoot=0.0, step_scales=())
  assert not bool(short.success[0])
  np.testing.assert_allclose(short.x_adv, [[1.0, 0.605]], atol=1e-6)
  for unroll, tried in ((False, 4), (True, 5)):
    res = latent.latent_attack(ident, ident, head, x, y, overshoot=0.0,
                               step_scales=(1.1, 1.25, 1.5, 2.0, 3.0), unroll=unroll)
    assert bool(res.success[0])
    np.testing.assert_allclose(res.x_adv, [[1.0, 0.71]], atol=1e-6)
    # The step + scales 1.1, 1.25, 1.5, 2.0 (one decode each); the loop stops before 3.0,
    # the unrolled search runs it too (masked: the example keeps its first success).
    assert int(res.num_inverse_evals) == 1 + tried
    assert int(res.num_forward_evals) == 2 + tried
  assert float(res.x_adv.max()) <= 1.0
  with pytest.raises(InvjaxError, match="step_scales"):
    latent.latent_attack(ident, ident, head, x, y, step_scales=(1.5, -1.0))


def test_closed_form_targeted_matches_scipy_qp():
  m, a, b, x, y, enc, dec, head = PROBLEM
  tgt = ((y + 1) % K).astype(np.int32)
  res, info = latent.latent_attack(enc, dec, head, x, y, target=tgt, kappa=KAPPA, overshoot=0.0,
                                   clip=False, return_info=True)
  np.testing.assert_allclose(info.z_adv, _targeted_qp("z", m, a, b, x, tgt), atol=1e-4)
  assert np.array_equal(np.argmax(np.asarray(info.z_adv) @ a + b, 1), tgt)
  assert bool(res.success.all())


@pytest.mark.parametrize("decode_step", ["exact", "linear"])
def test_jacobian_reaches_the_minimal_image_point(decode_step):
  m, a, b, x, y, enc, dec, head = PROBLEM
  ref = _untargeted_reference("x", m, a, b, x, y)
  res = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0, clip=False,
                             method="jacobian", decode_step=decode_step)
  np.testing.assert_allclose(res.x_adv, ref, atol=2e-5)
  np.testing.assert_allclose(res.l2, np.linalg.norm(ref - x, axis=1), rtol=1e-4)
  # Better (in image space) than the latent-minimal step, which ignores M.
  closed = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0, clip=False)
  assert np.all(np.asarray(res.l2) <= np.asarray(closed.l2) + 1e-6)
  assert np.mean(np.asarray(res.l2)) < 0.9 * np.mean(np.asarray(closed.l2))
  # Targeted: the image-space QP.
  tgt = ((y + 2) % K).astype(np.int32)
  res_t = latent.latent_attack(enc, dec, head, x, y, target=tgt, kappa=KAPPA, overshoot=0.0,
                               clip=False, method="jacobian", decode_step=decode_step)
  np.testing.assert_allclose(res_t.x_adv, _targeted_qp("x", m, a, b, x, tgt), atol=1e-4)


def test_callable_head_and_jit():
  m, a, b, x, y, enc, dec, head = PROBLEM
  fn_head = lambda z: z @ head[0] + head[1]
  ref = _untargeted_reference("x", m, a, b, x, y)

  @jax.jit
  def run(xx):
    return latent.latent_attack(enc, dec, fn_head, xx, y, kappa=KAPPA, overshoot=0.0,
                                clip=False, method="jacobian", num_iters=2, unroll=False)

  res = run(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(res.x_adv, ref, atol=2e-5)
  assert int(res.num_grad_evals) == 2 * (2 * K + 1)


class _Sinh(nn.Module):
  """A non-linear flow: z = M sinh(x), x = asinh(M^-1 z)."""
  features: int

  def setup(self):
    init = lambda key, shape: jnp.eye(shape[0]) + 0.3 * jax.random.normal(key, shape)
    self.m = self.param("m", init, (self.features, self.features))

  def __call__(self, x):
    return jnp.sinh(x) @ self.m.T, jnp.zeros(x.shape[:1])

  def inverse(self, z):
    return jnp.arcsinh(jnp.linalg.solve(self.m, z.T).T), jnp.zeros(z.shape[:1])


@pytest.fixture(scope="module")
def nonlinear_model():
  from invjax.flows.classifier import InvertibleClassifier  # pylint: disable=g-import-not-at-top
  model = InvertibleClassifier(flow=_Sinh(D), num_classes=K, head="slice", latent_shape=(D,))
  x = np.random.default_rng(1).uniform(0.0, 1.0, (B, D)).astype(np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits_fn = jax.jit(lambda v: model.apply(variables, v)[0])
  y = np.asarray(jnp.argmax(logits_fn(x), 1), np.int32)
  return model, variables, x, y, logits_fn


@pytest.mark.parametrize("method", ["closed_form", "jacobian", "optimize"])
def test_success_is_rechecked_and_outputs_in_range(method, nonlinear_model):
  model, variables, x, y, logits_fn = nonlinear_model
  res = latent.latent_attack_from_model(model, variables, x, y, method=method, kappa=0.2,
                                        num_iters=3, num_steps=10)
  x_adv = np.asarray(res.x_adv)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  pred = np.argmax(np.asarray(logits_fn(res.x_adv)), 1)
  np.testing.assert_array_equal(np.asarray(res.success), pred != y)
  assert np.asarray(res.success).mean() >= 0.5
  np.testing.assert_allclose(res.l2, np.linalg.norm((x_adv - x).reshape(B, -1), axis=1),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.05)])
def test_epsilon_projection(norm, eps, nonlinear_model):
  model, variables, x, y, logits_fn = nonlinear_model
  res = latent.latent_attack_from_model(model, variables, x, y, method="jacobian", norm=norm,
                                        epsilon=eps, num_iters=3)
  dist = np.asarray(res.linf if norm == "linf" else res.l2)
  assert np.all(dist <= eps * (1 + 1e-5))
  pred = np.argmax(np.asarray(logits_fn(res.x_adv)), 1)
  np.testing.assert_array_equal(np.asarray(res.success), pred != y)
  free = latent.latent_attack_from_model(model, variables, x, y, method="jacobian", norm=norm,
                                         num_iters=3)
  free_dist = np.asarray(free.linf if norm == "linf" else free.l2)
  # Examples whose unconstrained attack needs more than epsilon cannot all succeed inside it.
  assert np.asarray(res.success).sum() <= np.asarray(free.success).sum()
  assert np.any(free_dist > eps) or np.all(np.asarray(res.success))


def test_linear_decode_step_is_one_deepfool_step(nonlinear_model):
  """decode_step="linear" on a non-linear flow: one DeepFool step of the whole classifier
  (gradients of its logits by jax.grad, per candidate class), with no decoder pass."""
  model, variables, x, y, logits_fn = nonlinear_model
  overshoot = 0.02
  res = latent.latent_attack_from_model(model, variables, x, y, method="jacobian", kappa=KAPPA,
                                        num_iters=1, clip=False, step_scales=None,
                                        overshoot=overshoot, decode_step="linear")
  logits = np.asarray(logits_fn(x), np.float64)
  ref = []
  for i in range(B):
    cands = []
    for t in range(K):
      if t == y[i]:
        continue
      w = np.asarray(jax.grad(lambda v: (logits_fn(v[None])[0, t] - logits_fn(v[None])[0, y[i]]))(
          jnp.asarray(x[i])), np.float64)
      step = max(KAPPA - (logits[i, t] - logits[i, y[i]]), 0.0) / (w @ w) * w
      cands.append((np.linalg.norm(step), x[i] + (1 + overshoot) * step))
    ref.append(min(cands, key=lambda c: c[0])[1])
  np.testing.assert_allclose(res.x_adv, np.array(ref), rtol=1e-4, atol=1e-5)
  assert int(res.num_inverse_evals) == 0
  exact = latent.latent_attack_from_model(model, variables, x, y, method="jacobian", kappa=KAPPA,
                                          num_iters=1, clip=False, step_scales=None,
                                          overshoot=overshoot)
  assert int(exact.num_inverse_evals) == 1
  assert int(exact.num_grad_evals) == int(res.num_grad_evals) + 1  # + the JVP of the target
  # The exact decode of the same latent target is a different image on this curved flow.
  assert np.abs(np.asarray(exact.x_adv) - np.asarray(res.x_adv)).max() > 1e-4


def test_bad_inputs():
  _, _, _, x, y, enc, dec, head = PROBLEM
  with pytest.raises(InvjaxError, match="epsilon"):
    latent.latent_attack(enc, dec, head, x, y, epsilon=-0.1)
  with pytest.raises(InvjaxError, match="y must have shape"):
    latent.latent_attack(enc, dec, head, x, y[:-1])
  bad = np.array(x)
  bad[0, 0] = np.nan
  with pytest.raises(InvjaxError, match="NaN"):
    latent.latent_attack(enc, dec, head, bad, y)
  with pytest.raises(InvjaxError, match="method"):
    latent.latent_attack(enc, dec, head, x, y, method="newton")
  with pytest.raises(InvjaxError, match="target must differ"):
    latent.latent_attack(enc, dec, head, x, y, target=y)
  with pytest.raises(InvjaxError, match="kappa"):
    latent.latent_attack(enc, dec, head, x, y, kappa=-1.0)
  with pytest.raises(InvjaxError, match="decode_step"):
    latent.latent_attack(enc, dec, head, x, y, method="jacobian", decode_step="newton")
  with pytest.raises(InvjaxError, match="closed-form"):
    latent.latent_attack(enc, dec, head, x, y, decode_step="linear")


def test_jacobian_respects_saturated_pixels_and_candidates():
  """x at the box edge: exact min-norm step of the box-constrained QP (scipy, with bounds)."""
  m, a, b, x, y, enc, dec, head = PROBLEM
  x = np.array(x)
  x[:, :3] = 0.0  # saturated low
  x[:, 3:5] = 1.0  # saturated high
  y = np.argmax(x @ m.T @ a + b, 1).astype(np.int32)
  res = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0, clip=True,
                             method="jacobian", num_iters=1)
  ref = []
  for i in range(B):
    best = None
    for t in range(K):
      if t == y[i]:
        continue
      w = m.T @ (a[:, t] - a[:, y[i]])
      rhs = b[y[i]] - b[t] + KAPPA - w @ x[i]
      sol = optimize.minimize(lambda d: np.sum(d ** 2), np.zeros(D), jac=lambda d: 2 * d,
                              bounds=[(-x[i, j], 1 - x[i, j]) for j in range(D)],
                              constraints=[{"type": "ineq", "fun": lambda d, w=w, r=rhs: w @ d - r,
                                            "jac": lambda d, w=w: w}],
                              method="SLSQP", options=dict(ftol=1e-14, maxiter=1000))
      assert sol.success, sol.message
      if best is None or np.linalg.norm(sol.x) < np.linalg.norm(best):
        best = sol.x
    ref.append(x[i] + best)
  np.testing.assert_allclose(res.x_adv, np.array(ref), atol=2e-5)
  assert bool(res.success.all())
  # One candidate class: the step towards the class with the highest other logit.
  one = latent.latent_attack(enc, dec, head, x, y, kappa=KAPPA, overshoot=0.0, clip=True,
                             method="jacobian", num_iters=1, num_candidates=1)
  logits = x @ m.T @ a + b
  logits[np.arange(B), y] = -np.inf
  top = np.argmax(logits, 1)
  z_adv = np.asarray(one.x_adv) @ m.T @ a + b
  margin = z_adv[np.arange(B), top] - z_adv[np.arange(B), y]
  np.testing.assert_allclose(margin, KAPPA, atol=1e-4)
  assert int(one.num_grad_evals) == 2 and int(res.num_grad_evals) == K + 1


@pytest.mark.parametrize("method", ["closed_form", "jacobian"])
def test_unrolled_iterations_equal_the_loops(method):
  m, a, b, x, y, enc, dec, head = PROBLEM
  # x near the top of the box so that clipping bites and the line search runs.
  x_hi = np.clip(x + 0.45, 0.0, 1.0).astype(np.float32)
  y_hi = np.argmax(np.asarray(enc(x_hi)) @ a + b, 1).astype(np.int32)
  kw = dict(kappa=KAPPA, method=method, num_iters=2, return_info=True)
  res_l, info_l = latent.latent_attack(enc, dec, head, x_hi, y_hi, unroll=False, **kw)
  res_u, info_u = latent.latent_attack(enc, dec, head, x_hi, y_hi, unroll=True, **kw)
  np.testing.assert_allclose(res_u.x_adv, res_l.x_adv, atol=1e-6)
  np.testing.assert_array_equal(res_u.success, res_l.success)
  np.testing.assert_allclose(info_u.z_adv, info_l.z_adv, atol=1e-5)


def test_optimize_differentiates_through_an_iresnet_inverse():
  # decode is an i-ResNet fixed-point inverse: method="optimize" backpropagates through it
  # (implicit function theorem); a while_loop alone is not reverse-differentiable.
  from invjax.flows import iresnet  # pylint: disable=g-import-not-at-top
  model = iresnet.IResNet(stages=(2,), kind="dense", hidden=16, activation="elu",
                          kernel_sizes=(1, 1), coeff=0.8, logdet="none", inverse_tol=1e-6,
                          inverse_max_iter=60)
  rng = np.random.default_rng(1)
  x = rng.uniform(0.3, 0.7, (B, D)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), method="transform")
  enc = lambda v: model.apply(variables, v, method="transform")
  dec = lambda z: model.apply(variables, z, method="inverse_transform")[0]
  a = rng.standard_normal((D, K)).astype(np.float32)
  b = np.zeros(K, np.float32)
  y = np.argmax(np.asarray(enc(x)) @ a + b, 1).astype(np.int32)
  kw = dict(kappa=KAPPA, clip=False, num_iters=1)
  jac = latent.latent_attack(enc, dec, (a, b), x, y, method="jacobian", **kw)
  opt = latent.latent_attack(enc, dec, (a, b), x, y, method="optimize", num_steps=10,
                             learning_rate=1e-2, unroll=False, **kw)
  assert bool(opt.success.all()) and bool(jac.success.all())
  # Success re-checked independently, and the optimiser never returns a worse point.
  logits = np.asarray(enc(opt.x_adv)) @ a + b
  assert np.all(np.argmax(logits, 1) != y)
  assert np.all(np.asarray(opt.l2) <= np.asarray(jac.l2) + 1e-5)


def test_encode_and_decode_of_the_wrong_shape_raise():
  _, _, _, x, y, enc, dec, head = PROBLEM
  for method in latent.METHODS:
    with pytest.raises(InvjaxError, match=r"decode must map the latent \(6, 8\) back to the "
                                          r"shape of x \(6, 8\), got \(6, 4\)"):
      latent.latent_attack(enc, lambda z: dec(z)[:, :4], head, x, y, method=method)
  with pytest.raises(InvjaxError, match="flat latent"):
    latent.latent_attack(lambda v: enc(v).reshape(B, 2, 4), dec, head, x, y)


def test_from_model_defaults_are_those_of_latent_attack(nonlinear_model):
  """`latent_attack_from_model` with no options is `latent_attack` on the model's functions."""
  model, variables, x, y, _ = nonlinear_model
  enc = lambda v: model.apply(variables, v, method="encode")
  dec = lambda z: model.apply(variables, z, method="decode")
  a, b = model.apply(variables, method="linear_head")
  for method in latent.METHODS:
    ref, ref_info = latent.latent_attack(enc, dec, (a, b), x, y, method=method, return_info=True)
    res, info = latent.latent_attack_from_model(model, variables, x, y, method=method,
                                                return_info=True)
    np.testing.assert_allclose(res.x_adv, ref.x_adv, atol=1e-6)
    np.testing.assert_array_equal(res.success, ref.success)
    np.testing.assert_allclose(info.z_adv, ref_info.z_adv, atol=1e-5)
    for counter in ("num_grad_evals", "num_forward_evals", "num_inverse_evals"):
      assert int(getattr(res, counter)) == int(getattr(ref, counter))
  with pytest.raises(InvjaxError, match=r"unknown arguments.*\['steps'\]"):
    latent.latent_attack_from_model(model, variables, x, y, steps=3)
