"""invjax attacks vs torchattacks on the same SmallCNN weights in PyTorch.

The shared fixture (`setup`, top of the file; `tests/attacks/tiny_cnn.py`) trains a tiny
`invjax.nets.cnn.SmallCNN` (widths 8-16-32) for a few hundred Adam steps on 16x16 crops of
the embedded mini CIFAR-10 (a random network is almost constant on real images), copies its
weights into the PyTorch twin of `bench/torch_cnn.py`, and takes `N` embedded test crops labelled by the model's own
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
import pytest

from invjax.attacks.autopgd import apgd, apgd_targeted

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")
from tests.attacks.tiny_cnn import tiny_cnn  # noqa: E402  (imports torch)

N = 200
TOLERANCE = 3  # images out of N = 200: 1.5 points


@pytest.fixture(scope="module")
def setup():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  net = tiny_cnn(widths=(8, 16, 32), steps=200, learning_rate=3e-3, batch_size=64,
                 sampler="legacy", jit="invjax", num_images=N)
  assert net.diff < 1e-4
  yield dict(fn=net.fn, x=net.x, y=net.y, tmodel=net.tmodel, xt=net.xt, yt=net.yt)
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


# ----------------------------------------------------------------------------- the ensemble

AA_STEPS, AA_QUERIES = 10, 100
AA_TOLERANCE = 2  # images out of N = 200: 1 point


def _torchattacks_autoattack(setup, norm, eps):
  """The AutoAttack standard protocol composed from torchattacks' attacks (the test's
  docstring): the robust images left after each attack."""
  tn, m = _TA_NORM[norm], setup["tmodel"]
  attacks = [
      torchattacks.APGD(m, norm=tn, eps=eps, steps=AA_STEPS, n_restarts=1, loss="ce", seed=0),
      torchattacks.APGDT(m, norm=tn, eps=eps, steps=AA_STEPS, n_restarts=1, n_classes=10,
                         seed=0),
      torchattacks.FAB(m, norm=tn, eps=eps, steps=AA_STEPS, n_restarts=1, multi_targeted=True,
                       n_classes=10, seed=0),
      torchattacks.Square(m, norm=tn, eps=eps, n_queries=AA_QUERIES, n_restarts=1, seed=0)]
  x, y = setup["xt"], setup["yt"]
  robust, after = torch.ones(len(y), dtype=torch.bool), []
  for attack in attacks:
    idx = robust.nonzero()[:, 0]
    if len(idx):
      adv = attack(x[idx], y[idx])
      with torch.no_grad():
        mis = m(adv).argmax(1) != y[idx]
      delta = (adv - x[idx]).reshape(len(idx), -1)
      dist = delta.abs().max(1)[0] if norm == "linf" else delta.norm(dim=1)
      won = mis & (dist <= eps * (1 + 1e-5) + 1e-6)
      robust[idx[won]] = False
    after.append(int(robust.sum()))
  return after


def test_autoattack_agrees_with_torchattacks(setup):
  """invjax's `autoattack` against the AutoAttack standard protocol run with torchattacks'
  attacks on the same weights and images: robust accuracy within 1 point at the end and
  within 1.5 points after each attack.

  How the protocol is matched. Both sides run the official "standard" version (Croce &
  Hein's fra31/auto-attack): APGD-CE (1 restart), APGD-T (targeted DLR towards the 9 most
  likely other classes, 1 restart each), FAB-T (9 targets, 1 restart), Square (1 restart),
  each only on the points still robust, a point's first adversarial kept; the budgets are cut
  alike on both sides (`AA_STEPS` iterations, `AA_QUERIES` queries) so that the test runs in
  seconds. torchattacks' own `AutoAttack` is not the reference: it fixes every attack at its
  default 10 iterations whatever the budget asked for (100 in the original; torchattacks issues
  #188 and #196) and exposes no budget. The reference is composed here from torchattacks'
  `APGD(loss="ce")`, `APGDT(n_classes=10)` (9 targets), `FAB(multi_targeted=True,
  n_classes=10)` (9 targets; it keeps only adversarials within epsilon, as the original's
  FAB-T) and `Square`, run in that order on the points still robust, a point counting as
  broken when the PyTorch twin misclassifies an output inside the ball (what MultiAttack
  does, plus the ball check invjax's ensemble makes).

  The budget, L_inf 2/255, leaves about 30% of the images robust, and APGD-T breaks a good
  part of what APGD-CE leaves (checked on the reference), so the sequence is measured, not
  only its first attack (at 8/255 APGD-CE alone breaks almost every image of this model).
  Tolerance: 1 point of N = 200 is 2 images. The two sides differ only by their random
  starts and Square's draws, which move the outcome by a borderline image or so: over five
  seeds of each library both end at 58-59 robust images, while a missing or mis-sequenced
  attack moves it by 20 (APGD-T's share). Each stage is held to the per-attack 1.5 points
  (`TOLERANCE`), since APGD-CE alone moves by 1-2 images between seeds on either side. The
  adversarials invjax reports are checked on the PyTorch twin.
  """
  from invjax.attacks.ensemble import autoattack, schedule  # pylint: disable=g-import-not-at-top

  norm, eps = "linf", 2 / 255
  report = autoattack(setup["fn"], setup["x"], setup["y"], key=jax.random.PRNGKey(0),
                      epsilon=eps, norm=norm,
                      steps=schedule("standard", norm, num_steps=AA_STEPS,
                                     num_queries=AA_QUERIES))
  assert report.clean_accuracy == 1.0  # the labels are the model's predictions
  assert [a.name for a in report.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  ours = [int(round(a.robust_accuracy_after * N)) for a in report.attacks]
  theirs = _torchattacks_autoattack(setup, norm, eps)
  assert abs(ours[-1] - theirs[-1]) <= AA_TOLERANCE, (ours, theirs)
  for o, t in zip(ours, theirs):
    assert abs(o - t) <= TOLERANCE, (ours, theirs)
  assert 0.05 * N < theirs[-1] < 0.95 * N  # the budget is informative
  assert theirs[-1] < theirs[0] - 2 * TOLERANCE  # the attacks after APGD-CE matter here
  # invjax's adversarials, re-evaluated on the PyTorch twin: misclassified, in the ball and box
  broken = np.array([b is not None for b in report.broken_by])
  assert int(np.sum(~broken)) == ours[-1]
  xa = torch.from_numpy(np.asarray(report.x_adv).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    pred = setup["tmodel"](xa).argmax(1).numpy()
  np.testing.assert_array_equal(pred[broken] != setup["yt"].numpy()[broken], True)
  x_adv, x = np.asarray(report.x_adv), np.asarray(setup["x"])
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.abs(x_adv - x).reshape(N, -1).max() <= eps * (1 + 1e-5) + 1e-6
