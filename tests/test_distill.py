"""Tests for invjax.distill: the KD loss against numpy, its gradient, and a tiny distillation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import data
from invjax import distill
from invjax.checks import InvjaxError
from invjax.flows.chain import Chain
from invjax.flows.classifier import make_classifier
from invjax.flows.coupling import AffineCoupling
from invjax.flows.squeeze import Squeeze


def _np_log_softmax(v):
  v = v - v.max(-1, keepdims=True)
  return v - np.log(np.exp(v).sum(-1, keepdims=True))


def _np_kd(s, t, temp):
  log_pt, log_ps = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
  return temp ** 2 * np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)


@pytest.fixture(scope="module")
def logits():
  rng = np.random.RandomState(0)
  return rng.randn(6, 5) * 3, rng.randn(6, 5) * 3, rng.randint(0, 5, 6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_loss_matches_numpy(logits, temp):
  s, t, y = logits
  got = distill.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                        temperature=temp)
  np.testing.assert_allclose(got, _np_kd(s, t, temp), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(distill.kd_loss(jnp.asarray(t), jnp.asarray(t), temperature=temp),
                             0.0, atol=1e-5)
  alpha = 0.3
  ce = -_np_log_softmax(s)[np.arange(6), y]
  loss, metrics = distill.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y),
                                            temperature=temp, alpha=alpha)
  want = (1 - alpha) * _np_kd(s, t, temp).mean() + alpha * ce.mean()
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_allclose(metrics["agreement"], np.mean(s.argmax(1) == t.argmax(1)))


def test_kd_gradient_scales_with_temperature(logits):
  s, t, _ = logits
  grad = lambda temp: np.asarray(jax.grad(
      lambda v: jnp.sum(distill.kd_loss(v, jnp.asarray(t), temperature=temp)))(jnp.asarray(s)))
  softmax = lambda v: np.exp(_np_log_softmax(v))
  for temp in (1.0, 4.0):  # d/ds T^2 KL = T (softmax(s/T) - softmax(t/T))
    np.testing.assert_allclose(grad(temp), temp * (softmax(s / temp) - softmax(t / temp)),
                               atol=1e-5)
  # High-temperature limit with zero-mean logits (Hinton et al. 2015): thanks to the T^2
  # factor the gradient tends to (s - t) / C, independent of T.
  s0, t0 = s - s.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
  g = np.asarray(jax.grad(lambda v: jnp.sum(distill.kd_loss(v, jnp.asarray(t0),
                                                            temperature=1000.0)))(jnp.asarray(s0)))
  np.testing.assert_allclose(g, (s0 - t0) / s.shape[1], atol=1e-2)  # O(s^2 / T) remainder
  # No gradient flows into the teacher.
  gt = jax.grad(lambda v: jnp.sum(distill.kd_loss(jnp.asarray(s), v)))(jnp.asarray(t))
  np.testing.assert_array_equal(gt, 0.0)


def test_bad_arguments(logits):
  s, t, _ = logits
  with pytest.raises(InvjaxError, match="temperature must be > 0"):
    distill.kd_loss(jnp.asarray(s), jnp.asarray(t), temperature=-1.0)
  with pytest.raises(InvjaxError, match=r"\[batch, classes\]"):
    distill.kd_loss(jnp.asarray(s), jnp.asarray(t[:, :3]))
  with pytest.raises(InvjaxError, match="alpha must lie in"):
    distill.distillation_loss(jnp.asarray(s), jnp.asarray(t), alpha=1.5)
  with pytest.raises(InvjaxError, match="needs labels"):
    distill.distillation_loss(jnp.asarray(s), jnp.asarray(t), alpha=0.5)


def test_agreement_matches_numpy():
  rng = np.random.RandomState(1)
  w1, w2 = rng.randn(4, 3), rng.randn(4, 3)
  x = rng.rand(50, 4).astype(np.float32)
  got = distill.agreement(lambda v: v @ w1, lambda v: v @ w2, x, batch_size=16)
  assert got == pytest.approx(np.mean((x @ w1).argmax(1) == (x @ w2).argmax(1)))


def test_distillation_raises_agreement():
  """A linear 4-class teacher on 8x8 crops; an invertible coupling-flow student."""
  crop = lambda ds, n: ds.take(np.arange(n))
  train_ds = crop(data.load("cifar10_mini", "train"), 512)
  test_ds = crop(data.load("cifar10_mini", "test"), 256)
  w = jax.random.normal(jax.random.PRNGKey(0), (192, 4)) / 8
  teacher = lambda x: (x.reshape(x.shape[0], -1) - 0.45) @ w
  to8 = lambda ds: data.Dataset(x=ds.x[:, 12:20, 12:20], y=ds.y, index=ds.index)
  train_ds, test_ds = to8(train_ds), to8(test_ds)
  # Hard labels = the teacher's own predictions (so the CE metric is meaningful).
  train_ds = data.Dataset(x=train_ds.x, index=train_ds.index, y=np.asarray(
      jnp.argmax(teacher(data.to_float(train_ds.x)), 1), np.int32))
  flow = Chain([Squeeze(), AffineCoupling(hidden=16), AffineCoupling(hidden=16, flip=True)])
  student = make_classifier(flow, 4, (8, 8, 3), head="slice")
  x_test = data.to_float(test_ds.x)
  v0 = jax.jit(student.init)(jax.random.PRNGKey(1), x_test[:2] - 0.5)
  student_fn = lambda v: jax.jit(distill.student_logits_fn(student, v, input_offset=0.5))
  before = distill.agreement(teacher, student_fn(v0), x_test)
  variables, history = distill.distill(
      student, v0, teacher, train_ds, key=jax.random.PRNGKey(2), num_steps=80, batch_size=64,
      learning_rate=3e-3, temperature=2.0, alpha=0.1, input_offset=0.5)
  after = distill.agreement(teacher, student_fn(variables), x_test)
  assert len(history) == 80 and history[-1]["kd"] < 0.5 * history[0]["kd"]
  assert after > 0.8 and after > before + 0.3, (before, after)
  # The student is still invertible after training: decode(encode(x)) == x.
  z = student.apply(variables, x_test[:4] - 0.5, method="encode")
  x_rec = student.apply(variables, z, method="decode") + 0.5
  np.testing.assert_allclose(x_rec, x_test[:4], atol=1e-4)
