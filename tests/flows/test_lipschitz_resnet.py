"""Certified i-ResNet: invertible, its log-det is slogdet of the dense Jacobian, and the
certified bounds (from the layers' actual operators) dominate the singular values of dense
Jacobians of every layer, every block, the flow, its inverse and the logit map."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import InvjaxError
from invjax import flows
from invjax.flows import lipschitz_resnet
from invjax.flows.spectral_norm import SpectralConv
from invjax.robust.certificates import certified_lipschitz
from invjax.train import recipes
from tests.flows.helpers import check_log_det_and_inverse

SHAPE = (4, 4, 2)


def _classifier(head="pooled", **kw):
  spec = recipes.classifier_spec(
      dict(name="lipschitz_resnet", stages=(1, 1), hidden=4, coeff=0.8, **kw), num_classes=3,
      image_shape=SHAPE, head=head)
  return recipes.build_classifier(spec)


def _x(n=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n,) + SHAPE, minval=-0.5, maxval=0.5)


def _dense_jac(fn, x0):
  flat = lambda v: fn(v.reshape((1,) + x0.shape)).reshape(-1)
  return np.asarray(jax.jacfwd(flat)(x0.reshape(-1)), np.float64)


def _sv(jac):
  return np.linalg.svd(jac, compute_uv=False)


def _stale(variables, seed=5):
  """Variables whose power-iteration vectors are random: the layers may exceed coeff."""
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))
  def fresh(path, v):
    if jax.tree_util.keystr(path).endswith("['v']"):
      u = jax.random.normal(next(keys), v.shape)
      return u / jnp.linalg.norm(u)
    return v
  return {**variables, "spectral": jax.tree_util.tree_map_with_path(fresh, variables["spectral"])}


def test_registry_builds_it_and_decode_inverts_encode():
  model = _classifier()
  assert isinstance(model.flow, flows.LipschitzResNet)
  x = _x()
  v = model.init(jax.random.PRNGKey(0), x)
  z = model.apply(v, x, method="encode")
  assert z.shape == (3, 32)
  np.testing.assert_allclose(np.asarray(model.apply(v, z, method="decode")), np.asarray(x),
                             atol=1e-5)


def test_block_is_scaled_residual_with_exact_log_det_and_inverse():
  block = lipschitz_resnet.LipschitzBlock(hidden=4, kernel_sizes=(3, 1), coeff=0.7,
                                          logdet="exact")
  x = _x(2)
  v = block.init(jax.random.PRNGKey(1), x)
  plain = flows.IResNetBlock(hidden=4, kernel_sizes=(3, 1), coeff=0.7, logdet="none")
  y_plain = plain.apply(v, x, method="transform")          # same parameters, x + g(x)
  y, _ = block.apply(v, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_plain) / (1 + 0.7 ** 2), rtol=1e-6)
  check_log_det_and_inverse(block, v, x, log_det_atol=1e-4)


def test_flow_jacobian_singular_values_within_certified_bounds():
  model = _classifier()
  x = _x()
  v = model.init(jax.random.PRNGKey(2), x)
  v = flows.converge_spectral_norms(model, v, x, method="encode")
  cert = certified_lipschitz(model, v)
  assert cert.encoder <= 1.0 + 1e-4         # converged: every block is <= 1
  for i in range(x.shape[0]):
    s = _sv(_dense_jac(lambda u: model.apply(v, u, method="encode"), x[i]))
    assert s[0] <= cert.encoder * (1 + 1e-5)
    assert 1.0 / s[-1] <= cert.decoder * (1 + 1e-5)           # Lip(F^-1) = 1 / sigma_min
    s_logits = _sv(_dense_jac(lambda u: model.apply(v, u)[0], x[i]))
    assert s_logits[0] <= cert.lipschitz * (1 + 1e-5)
  # the nominal decoder bound prod (1 + c) / (1 - c) agrees with the certificate at init
  np.testing.assert_allclose(cert.decoder, model.flow.lipschitz_bounds()[1], rtol=1e-3)


@pytest.mark.parametrize("stale", [False, True])
def test_each_layer_and_block_bound_dominates_its_dense_jacobian(stale):
  model = _classifier(head="slice")
  x = _x(1)
  v = model.init(jax.random.PRNGKey(3), x)
  if stale:
    v = _stale(v)
  cert = certified_lipschitz(model, v)
  flow_p, flow_s = v["params"]["flow"], v["spectral"]["flow"]
  blk = lipschitz_resnet.LipschitzBlock(**model.flow.block_kwargs())
  h = x
  exceeded = []
  for b, name in enumerate(["stage0_block0", "stage1_block0"]):
    if b == 1:
      h = flows.Squeeze().apply({}, h)[0]
    for i, k in enumerate(model.flow.kernel_sizes):
      p, s = flow_p[name]["g"][f"layer_{i}"], flow_s[name]["g"][f"layer_{i}"]
      # the layer on its own (a linear map plus bias: its Jacobian is the operator)
      conv = SpectralConv(p["kernel"].shape[-1], (k, k), coeff=model.flow.coeff)
      lv = {"params": p, "spectral": s}
      layer_in = jnp.zeros(h.shape[1:-1] + (p["kernel"].shape[2],))
      sigma = _sv(_dense_jac(lambda u: conv.apply(lv, u), layer_in))[0]
      assert sigma <= cert.layers[b][i] * (1 + 1e-5), (name, i, sigma, cert.layers[b][i])
      assert cert.layers_lower[b][i] <= sigma * (1 + 1e-4)
      exceeded.append(sigma > model.flow.coeff * 1.01)
    bv = {"params": flow_p[name], "spectral": flow_s[name]}
    sigma_block = _sv(_dense_jac(lambda u: blk.apply(bv, u, method="transform"), h[0]))[0]
    assert sigma_block <= cert.blocks[b] * (1 + 1e-5)
    h = blk.apply(bv, h, method="transform")
  # with random power-iteration vectors some layers really exceed coeff: the certificate
  # follows the operators, not the coefficient
  assert any(exceeded) == stale
  if stale:
    assert cert.lipschitz > cert.nominal


def test_errors():
  with pytest.raises(InvjaxError, match="unknown LipschitzResNet"):
    lipschitz_resnet.from_config(dict(stages=(1,), bogus=1))
  with pytest.raises(InvjaxError, match="LipschitzResNet or an IResNet"):
    lipschitz_resnet.block_scale(flows.IRevNet())
  with pytest.raises(InvjaxError, match="coeff"):
    lipschitz_resnet.LipschitzResNet(stages=(1,), coeff=1.0).init(jax.random.PRNGKey(0), _x(1))
