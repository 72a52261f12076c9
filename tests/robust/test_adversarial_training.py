"""Adversarial training's example generators: against numpy references on a linear invertible
classifier (PGD's sign-gradient steps of the closed-form softmax gradient; the latent step's
closed form), inside the epsilon ball and [0, 1], stronger than clean, cheaper than PGD-k (the
matrix products in the traced step), no gradient through their construction, and
`train_classifier(adversarial=...)` end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import InvjaxError
from invjax import data as data_lib
from invjax.robust import adversarial_training as at
from invjax.train import recipes

EPS = 0.05
SHAPE = (4, 4, 2)
D, K = 32, 4


def _linear_model(seed=0):
  """An invertible linear classifier z = x W, logits = z A + b, as (variables) functions."""
  rng = np.random.default_rng(seed)
  w = np.eye(D) + 0.3 * rng.standard_normal((D, D))
  v = {"w": jnp.asarray(w, jnp.float32), "w_inv": jnp.asarray(np.linalg.inv(w), jnp.float32),
       "a": jnp.asarray(rng.standard_normal((D, K)), jnp.float32),
       "b": jnp.asarray(0.1 * rng.standard_normal(K), jnp.float32)}
  encode = lambda v, x: x.reshape(x.shape[0], -1) @ v["w"]
  decode = lambda v, z: (z @ v["w_inv"]).reshape((z.shape[0],) + SHAPE)
  head = lambda v: (v["a"], v["b"])
  logits = lambda v, x: encode(v, x) @ v["a"] + v["b"]
  return v, logits, encode, decode, head


def _batch(n=16, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (n,) + SHAPE).astype(np.float32)
  x[:, 0, 0, 0], x[:, 1, 1, 1] = 0.0, 1.0  # saturated pixels
  return jnp.asarray(x), jnp.asarray(rng.integers(0, K, n), jnp.int32)


def _ce(logits_fn, v, x, y):
  return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits_fn(v, x), y))


def _in_ball(x_adv, x, eps):
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  assert np.all(np.abs(x_adv - x) <= eps + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_examples_match_numpy_pgd():
  v, logits, *_ = _linear_model()
  x, y = _batch()
  key = jax.random.PRNGKey(3)
  steps, alpha = 5, 2.5 * EPS / 5
  got = np.asarray(jax.jit(lambda v, x, y, k: at.pgd_examples(
      logits, v, x, y, k, epsilon=EPS, num_steps=steps))(v, x, y, key))
  # numpy: the same uniform start, then sign steps of d CE / dx = W A (softmax - onehot)
  w, a, b = (np.asarray(v[k], np.float64) for k in ("w", "a", "b"))
  x0 = np.asarray(x, np.float64)
  start = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, -EPS, EPS), np.float64)
  xa = np.clip(np.clip(x0 + start, x0 - EPS, x0 + EPS), 0, 1)
  onehot = np.eye(K)[np.asarray(y)]
  for _ in range(steps):
    lg = xa.reshape(len(xa), -1) @ w @ a + b
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = ((p - onehot) @ a.T @ w.T).reshape(xa.shape)
    xa = np.clip(np.clip(xa + alpha * np.sign(g), x0 - EPS, x0 + EPS), 0, 1)
  assert np.mean(np.abs(got - xa) > 1e-5) < 0.01  # sign flips only where the gradient ~ 0
  _in_ball(got, x, EPS)
  assert np.all(_ce(logits, v, jnp.asarray(got), y) > _ce(logits, v, x, y))


def test_latent_examples_match_the_closed_form_and_stay_in_the_ball():
  v, logits, encode, decode, head = _linear_model()
  x, y = _batch()
  y = jnp.where(jnp.arange(16) < 12, jnp.argmax(logits(v, x), -1), y)  # 12+ classified right
  gen = jax.jit(lambda v, x, y: at.latent_examples(encode, decode, head, v, x, y,
                                                   epsilon=EPS, method="jacobian"))
  got = np.asarray(gen(v, x, y))
  # Closed form (linear model, one candidate, filled): the L_inf-minimal step across the
  # runner-up t's boundary is along sign(W (A_t - A_y)), stretched to epsilon; an example
  # already misclassified is returned unchanged.
  w, a, b = (np.asarray(v[k], np.float64) for k in ("w", "a", "b"))
  x0 = np.asarray(x, np.float64)
  lg = x0.reshape(len(x0), -1) @ w @ a + b
  yy = np.asarray(y)
  t = np.argmax(np.where(np.eye(K)[yy] > 0, -np.inf, lg), 1)
  row = (w @ (a[:, t] - a[:, yy])).T.reshape(x0.shape)
  ref = np.clip(x0 + EPS * np.sign(row), 0, 1)
  wrong = np.argmax(lg, 1) != yy
  ref[wrong] = x0[wrong]
  np.testing.assert_allclose(got, ref, atol=1e-5)
  assert (~wrong).sum() >= 12 and wrong.sum() >= 1
  _in_ball(got, x, EPS)
  ce_adv, ce = _ce(logits, v, jnp.asarray(got), y), _ce(logits, v, x, y)
  assert np.all(ce_adv[~wrong] > ce[~wrong])
  # the closed-form latent step (exact decode) and the unfilled minimal step: in the ball too
  for kw in (dict(method="closed_form"), dict(fill=False), dict(num_iters=2, num_candidates=None)):
    out = at.latent_examples(encode, decode, head, v, x, y, epsilon=EPS, **kw)
    _in_ball(out, x, EPS)
    assert np.mean(_ce(logits, v, out, y)) > np.mean(ce)
  with pytest.raises(InvjaxError, match="method"):
    at.latent_examples(encode, decode, head, v, x, y, epsilon=EPS, method="optimize")
  with pytest.raises(InvjaxError, match="epsilon"):
    at.latent_examples(encode, decode, head, v, x, y, epsilon=0.0)


def _glow(num_classes=K):
  spec = recipes.classifier_spec(dict(name="glow", num_levels=1, num_steps=1, hidden=8),
                                 num_classes=num_classes, image_shape=SHAPE,
                                 head="identity_slice")
  model = recipes.build_classifier(spec)
  x, y = _batch()
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x - 0.5)
  return spec, model, variables, x, y


def _matmuls(fn, *args) -> int:
  """Convolutions and matrix products in the (unrolled) traced program of fn(*args)."""
  count, stack = 0, [jax.make_jaxpr(fn)(*args).jaxpr]
  while stack:
    j = stack.pop()
    count += sum(e.primitive.name in ("conv_general_dilated", "dot_general") for e in j.eqns)
    stack.extend(jax.extend.core.subjaxprs(j))
  return count


def test_latent_examples_cost_fewer_passes_than_pgd_on_a_glow():
  _, model, v, x, y = _glow()
  key = jax.random.PRNGKey(0)
  pgd1, pgd7, latent = (at.make_generator(kind, model, epsilon=EPS, num_steps=n, unroll=True)
                        for kind, n in (("pgd", 1), ("pgd", 7), ("latent", 1)))
  c1, c7, cl = (_matmuls(g, v, x, y, key) for g in (pgd1, pgd7, latent))
  # measured: PGD-1 (one forward-backward) 6, PGD-7 42, latent 11 convolutions / products
  assert c7 > 6 * c1 and cl < 3 * c1 < c7 / 2, (c1, c7, cl)
  for g in (pgd7, latent):
    out = jax.jit(g)(v, x, y, key)
    _in_ball(out, x, EPS)
    assert np.mean(_ce(at.model_functions(model)[0], v, out, y)) > np.mean(
        _ce(at.model_functions(model)[0], v, x, y))
  with pytest.raises(InvjaxError, match="kind"):
    at.make_generator("fgsm", model, epsilon=EPS, num_steps=1)


def test_no_gradient_flows_through_the_examples():
  v, logits_fn, encode, decode, head = _linear_model()
  x, y = _batch()
  key = jax.random.PRNGKey(2)
  gens = {"pgd": lambda v, x, y, k: at.pgd_examples(logits_fn, v, x, y, k, epsilon=EPS,
                                                    num_steps=2),
          "latent": lambda v, x, y, k: at.latent_examples(encode, decode, head, v, x, y, k,
                                                          epsilon=EPS)}
  for gen in gens.values():

    def loss(v, x_fixed=None):
      xb = at.adversarial_batch(gen, v, x, y, key, fraction=0.5) if x_fixed is None else x_fixed
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_fn(v, xb), y))

    xb = at.adversarial_batch(gen, v, x, y, key, fraction=0.5)
    np.testing.assert_array_equal(xb[8:], x[8:])  # the second half stays clean
    assert np.any(np.asarray(xb[:8]) != np.asarray(x[:8]))
    g = jax.grad(loss)(v)
    g_fixed = jax.grad(lambda p: loss(p, xb))(v)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           g, g_fixed)
    assert np.abs(np.asarray(g["a"])).max() > 0
  with pytest.raises(InvjaxError, match="fraction"):
    at.adversarial_batch(gen, v, x, y, key, fraction=0.0)


def _data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int32)
  x = rng.integers(0, 100, (n,) + SHAPE) + 120 * y[:, None, None, None]
  return data_lib.Dataset(x.astype(np.uint8), y, np.arange(n, dtype=np.int32))


def test_train_classifier_with_adversarial_training(tmp_path):
  spec, *_ = _glow(num_classes=2)
  for kind in at.KINDS:
    out = recipes.train_classifier(
        spec, _data(128, 0), _data(64, 1), str(tmp_path / kind), optimizer=optax.adam(1e-2),
        adversarial=kind, adversarial_epsilon=EPS, adversarial_steps=2, num_steps=20,
        batch_size=32, log_every=20, checkpoint_every=20, progress=False)
    assert out["adversarial"] == kind and out["step"] == 20 and out["test_accuracy"] > 0.7, out
    with open(tmp_path / kind / "metrics.jsonl") as f:
      assert "adversarial_accuracy" in f.read()
  with pytest.raises(InvjaxError, match="kind"):
    recipes.train_classifier(spec, _data(8, 0), _data(8, 1), str(tmp_path / "bad"),
                             optimizer=optax.adam(1e-2), adversarial="fgsm", num_steps=1,
                             batch_size=4, progress=False)


def test_classifier_config_keys():
  from launch.configs import classifier  # pylint: disable=g-import-not-at-top
  off = classifier.get_config("smoke,model=glow")
  pgd = classifier.get_config("smoke,model=glow,adversarial=pgd")
  latent = classifier.get_config("smoke,model=glow,adversarial=latent,adversarial_steps=2")
  assert off.adversarial == "" and pgd.adversarial == "pgd" and pgd.adversarial_steps == 7
  assert latent.adversarial_steps == 2 and latent.adversarial_fraction == 0.5
  assert abs(pgd.adversarial_epsilon - 8 / 255) < 1e-9
