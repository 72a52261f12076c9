"""InvertibleClassifier: round trip, linear head = z @ A + b, gradients, identity slice.

References are independent of the head code: explicit slicing / pooling of z
computed here from the raw parameters, numpy matmuls in float64.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.chain import Chain
from invjax.flows.classifier import (InvertibleClassifier, cross_entropy, hybrid_loss,
                                     latent_shape_of, make_classifier, nll_bits_per_dim)
from invjax.flows.glow import Glow
from invjax.flows.iresnet import IResNet


class _AffineCouplingNHWC(nn.Module):
  """Test-only: x2 -> x2 * exp(s(x1)) + t(x1) on the channel halves; flip swaps roles."""
  flip: bool = False

  @nn.compact
  def st(self, x1, c2):
    h = nn.Dense(2 * c2, kernel_init=nn.initializers.normal(0.3))(x1)
    return h[..., :c2], jnp.tanh(h[..., c2:])

  def _split(self, x):
    c = x.shape[-1] // 2
    a, b = x[..., :c], x[..., c:]
    return (b, a) if self.flip else (a, b)

  def _join(self, a, b):
    return jnp.concatenate((b, a) if self.flip else (a, b), -1)

  def __call__(self, x):
    x1, x2 = self._split(x)
    t, s = self.st(x1, x2.shape[-1])
    return self._join(x1, x2 * jnp.exp(s) + t), jnp.sum(s, axis=(1, 2, 3))

  def inverse(self, y):
    y1, y2 = self._split(y)
    t, s = self.st(y1, y2.shape[-1])
    return self._join(y1, (y2 - t) * jnp.exp(-s)), -jnp.sum(s, axis=(1, 2, 3))


class _Flatten(nn.Module):
  """Test-only volume-preserving reshape NHWC -> [B, D] (a flat-latent flow like Glow)."""
  shape: tuple

  def __call__(self, x):
    return x.reshape(x.shape[0], -1), jnp.zeros(x.shape[0], x.dtype)

  def inverse(self, y):
    return y.reshape((y.shape[0],) + self.shape), jnp.zeros(y.shape[0], y.dtype)


SHAPE = (4, 4, 4)  # H, W, C (tiny)


def _flow(flat: bool):
  layers = [_AffineCouplingNHWC(False), _AffineCouplingNHWC(True)]
  return Chain(layers + ([_Flatten(SHAPE)] if flat else []))


def _x(n=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n,) + SHAPE)


CASES = [("slice", None, False), ("slice", 5, True), ("pooled", None, False),
         ("identity_slice", None, True), ("identity_slice", None, False)]


@pytest.mark.parametrize("head,k,flat", CASES)
def test_roundtrip_and_linear_head(head, k, flat):
  clf = make_classifier(_flow(flat), 3, SHAPE, head=head, slice_dims=k)
  x = _x()
  variables = clf.init(jax.random.PRNGKey(1), x)
  logits, z, log_det = clf.apply(variables, x)
  assert z.shape == (3, 64) and logits.shape == (3, 3) and log_det.shape == (3,)
  np.testing.assert_allclose(clf.apply(variables, x, method="encode"), z, atol=1e-6)
  x_rec = clf.apply(variables, z, method="decode")
  np.testing.assert_allclose(x_rec, x, atol=1e-5)
  np.testing.assert_allclose(clf.apply(variables, z, method="logits"), logits, atol=1e-6)

  a, b = clf.apply(variables, method="linear_head")
  assert a.shape == (64, 3) and b.shape == (3,)
  zn = np.asarray(z, np.float64)
  np.testing.assert_allclose(zn @ np.asarray(a, np.float64) + np.asarray(b), logits,
                             rtol=1e-5, atol=1e-5)
  # Independent reference computed here from the raw head parameters.
  if head == "identity_slice":
    np.testing.assert_array_equal(logits, z[:, :3])
    assert "params" not in variables or "dense" not in variables["params"]
  else:
    w = np.asarray(variables["params"]["dense"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["dense"]["bias"], np.float64)
    feats = zn[:, :(k or 64)] if head == "slice" else zn.reshape(3, 16, 4).mean(1)
    np.testing.assert_allclose(feats @ w + bias, logits, rtol=1e-5, atol=1e-5)


def test_ce_gradient_flows_to_flow_and_head():
  clf = make_classifier(_flow(False), 3, SHAPE, head="slice")
  x, y = _x(4), jnp.array([0, 1, 2, 1])
  variables = clf.init(jax.random.PRNGKey(3), x)

  def loss(params):
    logits, _, _ = clf.apply({"params": params}, x)
    return cross_entropy(logits, y)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
  assert all(np.isfinite(v) and v > 0 for v in jax.tree.leaves(norms)), norms
  # CE against the optax-free formula.
  logits = np.asarray(clf.apply(variables, x)[0], np.float64)
  ref = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(4), np.asarray(y)])
  np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), y), ref, rtol=1e-5)


def test_hybrid_loss_bits_per_dim_closed_form():
  z = jnp.zeros((2, 8))
  log_det = jnp.array([0.0, 8 * np.log(2.0)])
  bpd = nll_bits_per_dim(z, log_det)
  # log N(0; 0, 1) = -0.5 log(2 pi) per dim; + log 256 = 8 bits; log_det of 8 ln2 removes 1 bit.
  expect0 = (0.5 * np.log(2 * np.pi) + np.log(256)) / np.log(2)
  np.testing.assert_allclose(bpd, [expect0, expect0 - 1.0], rtol=1e-6)
  logits, y = jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0])
  loss, m = hybrid_loss(logits, y, z, log_det, nll_weight=0.5)
  np.testing.assert_allclose(loss, m["ce"] + 0.5 * m["bits_per_dim"], rtol=1e-6)
  np.testing.assert_allclose(m["accuracy"], 0.5)


def test_errors():
  with pytest.raises(InvjaxError, match="head must be one of"):
    make_classifier(_flow(False), 3, SHAPE, head="bogus")
  assert latent_shape_of(_flow(True), SHAPE) == (64,)
  clf = InvertibleClassifier(_flow(False), 3, head="identity_slice")  # no latent_shape
  variables = clf.init(jax.random.PRNGKey(0), _x())
  with pytest.raises(InvjaxError, match="latent_shape"):
    clf.apply(variables, method="linear_head")
  wrong = InvertibleClassifier(_flow(False), 3, latent_shape=(64,))
  with pytest.raises(InvjaxError, match="latent has per-example shape"):
    wrong.init(jax.random.PRNGKey(0), _x())


@pytest.mark.parametrize("name", ["glow", "iresnet"])
def test_non_finite_images_and_latents_raise(name):
  flow = (Glow(SHAPE, num_levels=2, num_steps=1, hidden=4) if name == "glow" else
          IResNet(stages=(1,), hidden=4, kernel_sizes=(3,), logdet="none",
                  n_init_power_iterations=1))
  clf = make_classifier(flow, 3, SHAPE)
  x = _x(2)
  variables = clf.init(jax.random.PRNGKey(0), x)
  z = clf.apply(variables, x, method="encode")
  assert np.all(np.isfinite(np.asarray(clf.apply(variables, z, method="decode"))))
  bad_x = x.at[1, 2, 0, 3].set(jnp.nan)
  with pytest.raises(InvjaxError, match="x contains 1 NaN or infinite"):
    clf.apply(variables, bad_x)
  with pytest.raises(InvjaxError, match="x contains 1 NaN or infinite"):
    clf.apply(variables, bad_x, method="encode")
  with pytest.raises(InvjaxError, match="z contains 2 NaN or infinite"):
    clf.apply(variables, z.at[0, 5].set(jnp.nan).at[1, 0].set(jnp.inf), method="decode")
  # under jit the values are not known: no check (the flow's NaN comes back, as documented)
  logits = jax.jit(lambda v, x: clf.apply(v, x)[0])(variables, bad_x)
  assert np.all(np.isnan(np.asarray(logits[1]))) and np.all(np.isfinite(np.asarray(logits[0])))
