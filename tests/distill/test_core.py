"""Tests for invjax.distill: the KD loss against numpy, its gradient, and a tiny distillation;
Jacobian matching against the closed-form input gradients of linear models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import data
from invjax import distill
from invjax._src.checks import InvjaxError
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


@pytest.fixture(scope="module")
def crops_problem():
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
  return teacher, train_ds, x_test, student, v0


def test_distillation_raises_agreement(crops_problem):
  teacher, train_ds, x_test, student, v0 = crops_problem
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


# ----------------------------------------------------------------------------- Jacobian matching


def _np_softmax(v):
  return np.exp(_np_log_softmax(v))


def _np_linear_grad(w, b, x, c, temp=1.0):
  """d log softmax((x w + b) / T)_c / dx = (w[:, c] - w softmax((x w + b) / T)) / T per row."""
  p = _np_softmax((x @ w + b) / temp)
  return (w[:, c].T - p @ w.T) / temp


def _np_cos(a, b):
  return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def linear_pair():
  rng = np.random.RandomState(3)
  return (rng.randn(6, 4), rng.randn(4) * 0.1, rng.randn(6, 4), rng.randn(4) * 0.1,
          rng.rand(20, 6))


def test_class_log_prob_gradient_linear(linear_pair):
  w, b, _, _, x = linear_pair
  c = np.arange(20) % 4
  g, logits = distill.class_log_prob_gradient(lambda v: v @ w + b, jnp.asarray(x), jnp.asarray(c))
  np.testing.assert_allclose(logits, x @ w + b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, _np_linear_grad(w, b, x, c), rtol=1e-4, atol=1e-5)
  g3, _ = distill.class_log_prob_gradient(lambda v: v @ w + b, jnp.asarray(x), jnp.asarray(c),
                                          temperature=3.0)
  np.testing.assert_allclose(g3, _np_linear_grad(w, b, x, c, 3.0), rtol=1e-4, atol=1e-5)
  with pytest.raises(InvjaxError, match="temperature must be > 0"):
    distill.class_log_prob_gradient(lambda v: v @ w, jnp.asarray(x), jnp.asarray(c),
                                    temperature=0.0)


def test_gradient_alignment_loss_and_cosine(linear_pair):
  rng = np.random.RandomState(4)
  s, t = rng.randn(5, 3, 4), rng.randn(5, 3, 4)
  got = distill.gradient_alignment_loss(jnp.asarray(s), jnp.asarray(t))
  want = 2 * (1 - _np_cos(s.reshape(5, -1), t.reshape(5, -1)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(distill.gradient_alignment_loss(jnp.asarray(3 * t), jnp.asarray(t)),
                             0.0, atol=1e-6)  # the scale does not matter
  np.testing.assert_allclose(distill.gradient_alignment_loss(jnp.asarray(-t), jnp.asarray(t)),
                             4.0, rtol=1e-6)
  gt = jax.grad(lambda v: jnp.sum(distill.gradient_alignment_loss(jnp.asarray(s), v)))(
      jnp.asarray(t))
  np.testing.assert_array_equal(gt, 0.0)  # the teacher's gradient is a constant
  with pytest.raises(InvjaxError, match="same shape"):
    distill.gradient_alignment_loss(jnp.asarray(s), jnp.asarray(t[:, :2]))
  # gradient_cosine of two linear models against the closed form, in chunks.
  ws, bs, wt, bt, x = linear_pair
  y = np.arange(20) % 4
  got = distill.gradient_cosine(lambda v: v @ wt + bt, lambda v: v @ ws + bs, x, y, batch_size=8)
  want = _np_cos(_np_linear_grad(ws, bs, x, y), _np_linear_grad(wt, bt, x, y))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  with pytest.raises(InvjaxError, match="classes must be integer"):
    distill.gradient_cosine(lambda v: v @ wt, lambda v: v @ ws, x, y.astype(np.float32))


class _Linear(nn.Module):
  """A linear student `x w + b` (flattened input)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(x.reshape(x.shape[0], -1))


def test_jacobian_term_in_loss_matches_closed_form(linear_pair):
  ws, bs, wt, bt, _ = linear_pair
  x8 = np.random.RandomState(5).randint(0, 256, (16, 1, 2, 3)).astype(np.uint8)  # 6 features
  batch = {"x": jnp.asarray(x8), "y": jnp.zeros(16, jnp.int32)}
  xf = x8.reshape(16, 6) / 255.0
  student = _Linear()
  params = {"params": {"Dense_0": {"kernel": jnp.asarray(ws, jnp.float32),
                                   "bias": jnp.asarray(bs, jnp.float32)}}}
  teacher = lambda v: v.reshape(v.shape[0], -1) @ wt + bt
  beta, temp = 0.7, 2.0
  loss_fn = distill.make_loss_fn(student, teacher, temperature=temp, mutable=False,
                                 jacobian_weight=beta)
  loss, (_, metrics) = loss_fn(params["params"], {}, batch, jax.random.PRNGKey(0))
  c = (xf @ wt + bt).argmax(1)  # the teacher's class
  align = 2 * (1 - _np_cos(_np_linear_grad(ws, bs, xf, c), _np_linear_grad(wt, bt, xf, c)))
  kd = _np_kd(xf @ ws + bs, xf @ wt + bt, temp).mean()
  np.testing.assert_allclose(metrics["jacobian"], align.mean(), rtol=1e-4)
  np.testing.assert_allclose(metrics["grad_cosine"], 1 - align.mean() / 2, rtol=1e-4)
  np.testing.assert_allclose(loss, kd + beta * align.mean(), rtol=1e-4)
  # A gradient temperature softens both models' log-probabilities before differentiating.
  soft = distill.make_loss_fn(student, teacher, temperature=temp, mutable=False,
                              jacobian_weight=beta, jacobian_temperature=3.0)
  _, (_, m3) = soft(params["params"], {}, batch, jax.random.PRNGKey(0))
  align3 = 2 * (1 - _np_cos(_np_linear_grad(ws, bs, xf, c, 3.0),
                            _np_linear_grad(wt, bt, xf, c, 3.0)))
  np.testing.assert_allclose(m3["jacobian"], align3.mean(), rtol=1e-4)
  assert abs(align3.mean() - align.mean()) > 1e-3
  # "random" draws other classes: a different (still closed-form-sized) term.
  rnd = distill.make_loss_fn(student, teacher, temperature=temp, mutable=False,
                             jacobian_weight=beta, jacobian_class="random")
  _, (_, m2) = rnd(params["params"], {}, batch, jax.random.PRNGKey(0))
  assert 0.0 <= float(m2["jacobian"]) <= 4.0 and float(m2["jacobian"]) != float(align.mean())
  # Off: no Jacobian metrics, the plain KD loss.
  plain = distill.make_loss_fn(student, teacher, temperature=temp, mutable=False)
  loss0, (_, m0) = plain(params["params"], {}, batch, jax.random.PRNGKey(0))
  assert "jacobian" not in m0
  np.testing.assert_allclose(loss0, kd, rtol=1e-4)
  with pytest.raises(InvjaxError, match="jacobian_weight must be >= 0"):
    distill.make_loss_fn(student, teacher, jacobian_weight=-1.0)
  with pytest.raises(InvjaxError, match="jacobian_temperature must be > 0"):
    distill.make_loss_fn(student, teacher, jacobian_weight=1.0, jacobian_temperature=-2.0)
  with pytest.raises(InvjaxError, match="jacobian_class must be"):
    distill.make_loss_fn(student, teacher, jacobian_weight=1.0, jacobian_class="top5")


def test_jacobian_matching_aligns_input_gradients(crops_problem):
  """Srinivas & Fleuret (2018): matching input gradients makes the student's attack
  directions the teacher's. Plain KD leaves them far apart (cosine ~0.3 here)."""
  teacher, train_ds, x_test, student, v0 = crops_problem
  y_teacher = np.asarray(jnp.argmax(teacher(x_test), 1))
  out = {}
  for beta in (0.0, 1.0):
    variables, history = distill.distill(
        student, v0, teacher, train_ds, key=jax.random.PRNGKey(2), num_steps=80, batch_size=64,
        learning_rate=3e-3, temperature=2.0, alpha=0.1, input_offset=0.5, jacobian_weight=beta)
    fn = jax.jit(distill.student_logits_fn(student, variables, input_offset=0.5))
    out[beta] = (np.median(distill.gradient_cosine(teacher, fn, x_test, y_teacher)),
                 distill.agreement(teacher, fn, x_test), history)
  (cos0, agree0, _), (cos1, agree1, hist1) = out[0.0], out[1.0]
  assert cos0 < 0.6 and cos1 > 0.9, (cos0, cos1)
  assert agree1 >= agree0 - 0.03, (agree0, agree1)
  assert hist1[-1]["grad_cosine"] > hist1[0]["grad_cosine"] + 0.3
