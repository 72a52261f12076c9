"""invjax attacks vs torchattacks on the same SmallCNN weights in PyTorch.

The shared fixture (`setup`, top of the file) trains a tiny `invjax.nets.cnn.SmallCNN`
(widths 8-16-32) for a few hundred Adam steps on 16x16 crops of the embedded mini CIFAR-10
(a random network is almost constant on real images), copies its weights into the PyTorch
twin of `bench/torch_cnn.py`, and takes `N` embedded test crops labelled by the model's own
predictions (clean accuracy 100%, so robust accuracy measures the attack). Both sides see
the same images, labels and weights (logits agree to ~1e-5).

Robust accuracy must agree within 1.5 points: at N = 200 images, 3 images. The attacks are
randomised (uniform / Gaussian random starts) and the two libraries draw different starts,
so a few borderline images can fall either way; torchattacks itself moves by up to 2-3 such
images between two of its own seeds on this model.
"""
import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from invjax import data
from invjax._src import compilation
from invjax.attacks.autopgd import apgd, apgd_targeted
from invjax.nets import cnn

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")
from bench import torch_cnn  # noqa: E402  (torch is imported inside its functions)

N = 200
TOLERANCE = 3  # images out of N = 200: 1.5 points


@pytest.fixture(scope="module")
def setup():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  model = cnn.SmallCNN(widths=(8, 16, 32))
  train = data.load("cifar10_mini", "train")
  xt = data.to_float(train.x[:, 8:24, 8:24])
  yt = jnp.asarray(train.y)
  params = cnn.init(model, jax.random.PRNGKey(0), (16, 16, 3))
  opt = optax.adam(3e-3)

  @compilation.jit
  def step(p, s, idx):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, xt[idx]), yt[idx]).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  rng = np.random.RandomState(0)
  for _ in range(200):
    params, state = step(params, state, rng.randint(0, len(yt), 64))
  fn = jax.jit(cnn.logits_fn(model, params))
  test = data.load("cifar10_mini", "test")
  x = data.to_float(test.x[:N, 8:24, 8:24])
  y = jnp.argmax(fn(x), 1).astype(jnp.int32)
  tmodel = torch_cnn.small_cnn(params).requires_grad_(False)
  xt_ = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  yt_ = torch.from_numpy(np.asarray(y).astype(np.int64))
  with torch.no_grad():
    assert np.abs(tmodel(xt_).numpy() - np.asarray(fn(x))).max() < 1e-4
  yield dict(fn=fn, x=x, y=y, tmodel=tmodel, xt=xt_, yt=yt_)
  torch.set_num_threads(threads)


def _torch_robust(setup, attack) -> int:
  """Images the torch model still classifies as labelled on torchattacks' outputs."""
  adv = attack(setup["xt"], setup["yt"])
  with torch.no_grad():
    return int((setup["tmodel"](adv).argmax(1) == setup["yt"]).sum())


def _check(res, setup, eps, norm):
  """Inside [0, 1] and the ball; success re-checked on the model."""
  x, x_adv = np.asarray(setup["x"]), np.asarray(res.x_adv)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  delta = (x_adv - x).reshape(len(x), -1)
  dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  assert np.all(dist <= eps * (1 + 1e-5) + 1e-6)
  pred = np.argmax(np.asarray(setup["fn"](jnp.asarray(x_adv))), 1)
  np.testing.assert_array_equal(np.asarray(res.success), pred != np.asarray(setup["y"]))


# ----------------------------------------------------------------------------- APGD, APGD-T

STEPS = 20
# 8/255 and 0.5 break almost every image of this undefended model; the smaller budgets
# leave 20-50% robust, where a weaker attack would show.
BUDGETS = [("linf", 8 / 255), ("linf", 2 / 255), ("l2", 0.5), ("l2", 0.1)]
INFORMATIVE = (2 / 255, 0.1)
_TA_NORM = {"linf": "Linf", "l2": "L2"}


@pytest.mark.parametrize("norm,eps,loss", [b + ("ce",) for b in BUDGETS] + [
    ("linf", 2 / 255, "dlr")])
def test_apgd_agrees_with_torchattacks(setup, norm, eps, loss):
  res = apgd(setup["fn"], setup["x"], setup["y"], key=jax.random.PRNGKey(0), epsilon=eps,
             norm=norm, loss=loss, num_steps=STEPS)
  _check(res, setup, eps, norm)
  ours = int(N - np.sum(np.asarray(res.success)))
  theirs = _torch_robust(setup, torchattacks.APGD(
      setup["tmodel"], norm=_TA_NORM[norm], eps=eps, steps=STEPS, loss=loss, seed=0))
  assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)
  if eps in INFORMATIVE:
    assert 0.05 * N < theirs < 0.95 * N  # the budget is informative


@pytest.mark.parametrize("norm,eps", BUDGETS)
def test_apgd_targeted_agrees_with_torchattacks(setup, norm, eps):
  res = apgd_targeted(setup["fn"], setup["x"], setup["y"], key=jax.random.PRNGKey(0),
                      epsilon=eps, norm=norm, num_steps=STEPS, num_target_classes=9)
  _check(res, setup, eps, norm)
  ours = int(N - np.sum(np.asarray(res.success)))
  theirs = _torch_robust(setup, torchattacks.APGDT(
      setup["tmodel"], norm=_TA_NORM[norm], eps=eps, steps=STEPS, n_classes=10, seed=0))
  assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)
  if eps in INFORMATIVE:
    assert 0.05 * N < theirs < 0.95 * N
