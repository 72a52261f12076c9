"""i-ResNet blocks and model: round trips, exact log-det vs slogdet(jacfwd), residual reporting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.flows import iresnet
from invjax.flows.fixed_point import ConvergenceWarning, check_converged
from invjax.flows.spectral_norm import converge_spectral_norms
from tests.flows.helpers import convergence_warnings


def _key(i):
  return jax.random.key(i, impl="rbg")


def _scale_kernels(variables, factor):
  """Blows kernels up so every spectral normalisation binds (non-trivial, Lip(layer) = coeff)."""
  def f(path, leaf):
    return leaf * factor if "kernel" in jax.tree_util.keystr(path) else leaf
  return {**variables, "params": jax.tree_util.tree_map_with_path(f, variables["params"])}


def _init(model, x, seed=0):
  variables = jax.jit(lambda k, v: model.init(k, v, method="transform"))(_key(seed), x)
  variables = _scale_kernels(variables, 5.0)
  return converge_spectral_norms(model, variables, x, n_rounds=30, method="transform")


def _dense_jacobian(fn, x1):
  flat = lambda z: fn(z.reshape((1,) + x1.shape)).reshape(-1)
  return np.asarray(jax.jacfwd(flat)(x1.reshape(-1)), np.float64)


# ELU and two layers: random blocks far enough from the identity (Lip(g) ~ 0.3 measured).
SMALL = dict(hidden=8, activation="elu", kernel_sizes=(3, 3))

X_IMG = jax.random.uniform(jax.random.key(1), (2, 4, 4, 2))
X_VEC = jax.random.normal(jax.random.key(2), (3, 5))


@pytest.mark.parametrize("kind,x", [("conv", X_IMG), ("dense", X_VEC)])
def test_exact_logdet_matches_slogdet_of_jacobian(kind, x):
  model = iresnet.IResNet(stages=(2,), kind=kind, **SMALL, coeff=0.9, logdet="exact")
  variables = _init(model, x)
  y, log_det = jax.jit(model.apply)(variables, x)
  assert log_det.shape == (x.shape[0],)
  transform = lambda z: model.apply(variables, z, method="transform")
  np.testing.assert_allclose(transform(x), y, atol=1e-6)
  for i in range(x.shape[0]):
    sign, ref = np.linalg.slogdet(_dense_jacobian(transform, x[i]))
    assert sign > 0
    assert abs(float(log_det[i]) - ref) <= 1e-4 * abs(ref) + 1e-6, (float(log_det[i]), ref)
  jac_g = _dense_jacobian(transform, x[0]) - np.eye(x[0].size)
  assert np.linalg.svd(jac_g, compute_uv=False)[0] > 0.2     # non-trivial residual branches


@pytest.mark.parametrize("jit,logdet", [(False, "none"), (True, "exact")])
def test_round_trip_and_lipschitz_bounds(jit, logdet):
  model = iresnet.IResNet(stages=(1, 1), **SMALL, coeff=0.9, logdet=logdet, inverse_max_iter=30)
  variables = _init(model, X_IMG)
  fwd = lambda vs, x: model.apply(vs, x)
  inv = lambda vs, z: model.apply(vs, z, method="inverse_with_info")
  if jit:
    fwd, inv = jax.jit(fwd), jax.jit(inv)
  z, log_det = fwd(variables, X_IMG)
  assert z.shape == (2, 2, 2, 8)
  x_rec, log_det_inv, infos = inv(variables, z)
  assert float(jnp.max(jnp.abs(x_rec - X_IMG))) < 1e-4
  np.testing.assert_allclose(log_det_inv, -log_det, rtol=1e-4)
  assert logdet == "none" or np.all(np.abs(np.asarray(log_det)) > 1e-2)
  assert len(infos) == 2
  for info in infos:
    assert info.residual.shape == (2,)
    assert int(info.iterations) <= 30
    check_converged(info, 1e-5)
  # bounds vs the measured spectrum of the full map's Jacobian
  lip_f, lip_inv = model.lipschitz_bounds()
  c = 0.9 ** 2
  np.testing.assert_allclose([lip_f, lip_inv], [(1 + c) ** 2, (1 - c) ** -2], rtol=1e-12)
  s = np.linalg.svd(_dense_jacobian(lambda v: model.apply(variables, v, method="transform"),
                                    X_IMG[0]), compute_uv=False)
  assert s[0] <= lip_f + 1e-4 and 1.0 / s[-1] <= lip_inv + 1e-4
  assert s[0] > 1.2 or 1.0 / s[-1] > 1.2                   # far from the identity


def test_unconverged_inverse_reports_and_raises():
  model = iresnet.IResNet(stages=(1,), **SMALL, coeff=0.9, logdet="none", inverse_max_iter=2)
  variables = _init(model, X_IMG, seed=3)
  z = model.apply(variables, X_IMG, method="transform")
  (x_rec, infos), diag = model.apply(variables, z, method="inverse_transform",
                                     mutable=["diagnostics"])
  (info,) = infos
  assert int(info.iterations) == 2
  sown = diag["diagnostics"]["stage0_block0"]["inverse_residual"][0]
  np.testing.assert_allclose(sown, info.residual)
  g_res = np.abs(np.asarray(model.apply(variables, x_rec, method="transform") - z)).reshape(2, -1)
  np.testing.assert_allclose(info.residual, g_res.max(1), rtol=1e-4)    # |y - F(x)|_inf
  assert float(info.residual.min()) > 1e-3
  with pytest.raises(checks.ConvergenceError, match=r"max residual \d"):
    check_converged(info, 1e-5)


def test_jitted_unconverged_inverse_warns():
  model = iresnet.IResNet(stages=(1,), **SMALL, coeff=0.9, logdet="none", inverse_max_iter=2)
  variables = _init(model, X_IMG, seed=3)
  z = model.apply(variables, X_IMG, method="transform")
  inv = jax.jit(lambda vs, z: model.apply(vs, z, method="inverse_transform"))
  with pytest.warns(ConvergenceWarning, match=r"after 2 iterations .*max residual .* > tol 1e-05"):
    x_rec, _ = inv(variables, z)
    jax.effects_barrier()
  assert float(jnp.max(jnp.abs(x_rec - X_IMG))) > 1e-3         # really not converged
  # converged (the same blocks, enough iterations): no warning
  converged = model.clone(inverse_max_iter=100)
  assert not convergence_warnings(lambda: jax.jit(
      lambda vs, z: converged.apply(vs, z, method="inverse_with_info"))(variables, z))
  # off: per call, or for the model
  assert not convergence_warnings(lambda: jax.jit(
      lambda vs, z: model.apply(vs, z, method="inverse_transform", warn=False))(variables, z))
  quiet = model.clone(inverse_warn=False)
  assert not convergence_warnings(lambda: jax.jit(
      lambda vs, z: quiet.apply(vs, z, method="inverse"))(variables, z))


def test_block_alone_rejects_non_finite_input():
  block = iresnet.IResNetBlock(**SMALL, logdet="none")
  variables = block.init(_key(0), X_IMG, method="transform")
  for bad_value in (jnp.nan, jnp.inf):
    bad = X_IMG.at[1, 2, 3, 0].set(bad_value)
    for method in ("__call__", "transform", "inverse_transform", "inverse_with_info", "inverse"):
      with pytest.raises(checks.InvjaxError, match="contains 1 NaN or infinite"):
        block.apply(variables, bad, method=method)
  # finite input: no error, and the model around the block still checks once at the top
  y, _ = block.apply(variables, X_IMG)
  assert np.all(np.isfinite(np.asarray(y)))
  model = iresnet.IResNet(stages=(1,), **SMALL, logdet="none")
  with pytest.raises(checks.InvjaxError, match="z contains 1 NaN"):
    model.apply(_init(model, X_IMG), X_IMG.at[0, 0, 0, 0].set(jnp.nan), method="inverse")


def test_russian_roulette_through_the_model():
  model = iresnet.IResNet(stages=(1,), **SMALL, coeff=0.7, logdet="russian_roulette")
  variables = _init(model, X_IMG[:1], seed=4)
  with pytest.raises(checks.InvjaxError, match="rngs=.*logdet"):
    model.apply(variables, X_IMG[:1])
  exact = model.clone(logdet="exact").apply(variables, X_IMG[:1])[1]
  keys = jax.random.split(_key(5), 2000)
  est = jax.jit(jax.vmap(lambda k: model.apply(variables, X_IMG[:1], rngs={"logdet": k})[1]))(keys)
  est = np.asarray(est[:, 0], np.float64)
  se = est.std(ddof=1) / np.sqrt(est.size)
  assert abs(est.mean() - float(exact[0])) <= 3 * se, (est.mean(), float(exact[0]), se)

  # one training step: Neumann gradient flows to every parameter, spectral state advances
  def loss(params, spectral, key):
    (z, ld), upd = model.apply({"params": params, "spectral": spectral}, X_IMG[:1],
                               rngs={"logdet": key}, mutable=["spectral"])
    return 0.5 * jnp.sum(z ** 2) - jnp.sum(ld), upd
  grads, upd = jax.jit(jax.grad(loss, has_aux=True))(variables["params"], variables["spectral"],
                                                     keys[0])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(v)) for v in leaves) and all(np.any(v != 0) for v in leaves)
  assert jax.tree.structure(upd["spectral"]) == jax.tree.structure(variables["spectral"])


def test_config_and_validation():
  model = iresnet.smoke(coeff=0.8)
  assert model.stages == (2, 2) and model.hidden == 32 and model.coeff == 0.8
  with pytest.raises(checks.InvjaxError, match="unknown"):
    iresnet.from_config({"stages": (1,), "depth": 3})
  with pytest.raises(checks.InvjaxError, match="open interval"):
    iresnet.IResNet(stages=(1,), coeff=1.0).init(_key(0), X_IMG)
  with pytest.raises(checks.InvjaxError, match="logdet"):
    iresnet.IResNet(stages=(1,), logdet="trace").init(_key(0), X_IMG)
  with pytest.raises(checks.InvjaxError, match="max_dim"):
    iresnet.IResNet(stages=(1,), logdet="exact", exact_max_dim=16, n_init_power_iterations=1).init(
        _key(0), X_IMG)


def test_flat_config_settings_reach_every_block():
  model = iresnet.from_config({"stages": (1, 1), "hidden": 16, "coeff": 0.9,
                               "logdet": "power_series", "n_terms": 3, "inverse_max_iter": 2})
  assert model.stages == (1, 1) and model.n_terms == 3
  shapes = jax.eval_shape(lambda k: model.init(k, X_IMG, method="transform"), _key(0))["params"]
  # 3-1-3 convs of width 16; stage 1 sees 4 x 2 = 8 channels after the squeeze
  assert shapes["stage0_block0"]["g"]["layer_0"]["kernel"].shape == (3, 3, 2, 16)
  assert shapes["stage1_block0"]["g"]["layer_1"]["kernel"].shape == (1, 1, 16, 16)
  assert shapes["stage1_block0"]["g"]["layer_2"]["kernel"].shape == (3, 3, 16, 8)
  variables = _init(model, X_IMG)
  z = model.apply(variables, X_IMG, method="transform")
  _, infos = model.apply(variables, z, method="inverse_transform", warn=False)
  assert [int(i.iterations) for i in infos] == [2, 2]          # inverse_max_iter of each block
  block = iresnet.IResNetBlock(**model.block_kwargs())
  assert block.n_terms == 3 and block.hidden == 16 and block.inverse_max_iter == 2
  with pytest.raises(checks.InvjaxError, match="unknown"):
    iresnet.from_config({"stages": (1,), "block": {}})


def test_inverse_is_differentiable_by_implicit_function_theorem():
  # d inverse(y) / dy = (d transform(x) / dx)^{-1} at x = inverse(y): dense numpy reference.
  model = iresnet.IResNet(stages=(2,), kind="dense", **SMALL, coeff=0.9, logdet="none",
                          inverse_tol=1e-7, inverse_max_iter=200)
  variables = _init(model, X_VEC)
  transform = lambda z: model.apply(variables, z, method="transform")
  inverse = lambda v: model.apply(variables, v, method="inverse_transform")[0]
  y = transform(X_VEC)
  # Reverse mode here; forward mode (jvp) in the weight check below.
  jac_inv = np.asarray(jax.jit(jax.jacrev(lambda v: inverse(v[None])[0]))(y[0]), np.float64)
  ref = np.linalg.inv(_dense_jacobian(transform, X_VEC[0]))
  np.testing.assert_allclose(jac_inv, ref, atol=2e-4)
  assert np.abs(ref - np.eye(ref.shape[0])).max() > 0.05  # not the identity
  # Gradient in the weights: the inverse of a fixed y moves with the parameters; compare a
  # directional derivative with a central finite difference of the (converged) inverse.
  params = variables["params"]
  direction = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) * 1e-2, params)
  def inv_of(p):
    return model.apply({**variables, "params": p}, y, method="inverse_transform")[0]
  _, tangent = jax.jvp(inv_of, (params,), (direction,))
  h = 1e-2
  plus = inv_of(jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction))
  minus = inv_of(jax.tree_util.tree_map(lambda p, d: p - h * d, params, direction))
  np.testing.assert_allclose(tangent, (plus - minus) / (2 * h), atol=2e-3, rtol=2e-2)
  grad = jax.grad(lambda p: jnp.sum(inv_of(p)))(params)
  dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad),
                                            jax.tree_util.tree_leaves(direction)))
  np.testing.assert_allclose(float(dot), float(jnp.sum(tangent)), rtol=1e-3, atol=1e-5)
