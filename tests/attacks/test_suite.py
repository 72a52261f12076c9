"""attacks.suite: rows agree with direct calls of the attacks, thresholding is honest, and bad
names / norms / epsilons are refused before any work."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import InvjaxError
from invjax import data
from invjax import flows
from invjax.attacks import gradient
from invjax.attacks import latent
from invjax.attacks import report
from invjax.attacks import suite
from invjax.flows import classifier as clf_lib


@pytest.fixture(scope="module")
def problem():
  test = data.load("cifar10_mini", "test")
  x, y = data.to_float(test.x[:24]), np.asarray(test.y[:24])
  flow = flows.build("glow", (32, 32, 3), num_levels=1, num_steps=1, hidden=8,
                     coupling="additive")
  model = clf_lib.make_classifier(flow, 10, (32, 32, 3), head="slice")
  key = jax.random.PRNGKey(0)
  variables = model.init({"params": key, "logdet": key}, x - 0.5)
  logits = model.apply(variables, x - 0.5)[0]
  y = np.array(jnp.argmax(logits, -1))  # untrained: label the images by its own prediction
  y[:4] = (y[:4] + 1) % 10  # four it gets wrong
  return model, variables, x, y


def test_rows_match_direct_attack_calls(problem):
  model, variables, x, y = problem
  eps = (2 / 255, 8 / 255)
  options = suite.SuiteOptions(norm="linf", latent_iters=2)
  out = suite.run_suite(model, variables, x, y, attacks=("fgsm", "latent_closed_form"),
                        epsilons=eps, options=options, input_offset=-0.5, seed=3)
  s = out.summary
  assert s["clean_accuracy"] == pytest.approx(20 / 24)
  assert s["num_attacked"] == 20
  rows = {r["attack"]: r for r in s["attacks"]}
  ctx = suite.make_context(model, variables, input_offset=-0.5, options=options)
  xa, ya = x[4:], jnp.asarray(y[4:])
  for e in eps:
    direct = gradient.fgsm(ctx.logits_fn, xa, ya, key=jax.random.PRNGKey(3), epsilon=e,
                           norm="linf")
    assert rows["fgsm"]["success"][str(e)] == pytest.approx(float(np.mean(direct.success)))
  res = latent.latent_attack(ctx.encode, ctx.decode, ctx.head, xa, ya, method="closed_form",
                             norm="linf", num_iters=2, num_steps=20, num_candidates=3)
  ok, dist = np.asarray(res.success), np.asarray(res.linf)
  for e in eps:  # a minimal-distance attack counts only successes within the budget
    assert rows["latent_closed_form"]["success"][str(e)] == pytest.approx(
        float(np.mean(ok & (dist <= e + 1e-7))))
  assert rows["latent_closed_form"]["success_unbounded"] == pytest.approx(float(ok.mean()))
  assert "| fgsm |" in report.markdown(s["attacks"], s["epsilons"], s["norm"])
  assert [stem for stem, _, _ in out.images] == ["grid_fgsm", "grid_latent_closed_form"]


@pytest.mark.parametrize("attacks,norm,eps,match", [
    (("pgd", "deepfool"), "linf", (0.1,), "unknown attack"),
    (("pgd",), "l1", (0.1,), "norm"),
    (("pgd",), "linf", (-0.1,), "epsilons"),
    (("pgd",), "linf", (), "epsilons"),
])
def test_validate_refuses_bad_requests(attacks, norm, eps, match):
  with pytest.raises(InvjaxError, match=match):
    suite.validate(attacks, norm, eps)


def test_chunks_are_the_attack_on_each_chunk_with_its_folded_key(problem):
  model, variables, x, y = problem
  ctx = suite.make_context(model, variables, input_offset=-0.5, options=suite.SuiteOptions())
  key = jax.random.PRNGKey(5)
  pgd = lambda xb, yb, k: gradient.pgd(ctx.logits_fn, xb, yb, key=k, epsilon=4 / 255,
                                       norm="linf", num_steps=2)
  got = suite.run_chunks(pgd, x, jnp.asarray(y), key, batch_size=8)  # 3 chunks of 8
  parts = [pgd(x[s:s + 8], jnp.asarray(y[s:s + 8]), jax.random.fold_in(key, c))
           for c, s in enumerate(range(0, 24, 8))]
  np.testing.assert_array_equal(got.x_adv, np.concatenate([np.asarray(p.x_adv) for p in parts]))
  np.testing.assert_array_equal(got.success, np.concatenate([p.success for p in parts]))
  np.testing.assert_allclose(got.linf, np.concatenate([p.linf for p in parts]))
  assert got.success.dtype == bool and got.num_grad_evals.shape == (24,)
  assert int(got.num_grad_evals.sum()) == sum(
      int(np.sum(np.broadcast_to(np.asarray(p.num_grad_evals), (len(p.success),))))
      for p in parts)
  # 0: one call on all points with the key itself, its result as it is
  assert suite.run_chunks(lambda a, b, k: (len(a), k), x, y, key) == (24, key)
  with pytest.raises(InvjaxError, match="attack_batch_size must be >= 0"):
    suite.run_chunks(pgd, x, y, key, batch_size=-1)


def test_chunks_shared_out_between_processes_are_the_single_process_rows(problem, monkeypatch):
  """The block of chunks each of 2 processes computes, and the sizes it gathers them with
  (the all-gather itself is simulated; tests/launch/test_evaluate_multiprocess.py runs one)."""
  model, variables, x, y = problem
  ctx = suite.make_context(model, variables, input_offset=-0.5, options=suite.SuiteOptions())
  key = jax.random.PRNGKey(5)
  fgsm = lambda xb, yb, k: gradient.fgsm(ctx.logits_fn, xb, yb, key=k, epsilon=4 / 255,
                                         norm="linf")
  one = suite.run_chunks(fgsm, x, jnp.asarray(y), key, batch_size=5)  # chunks 5, 5, 5, 5, 4
  locals_, pid = {}, [0]

  def fake_gather(local, sizes):
    locals_.setdefault(pid[0], []).append((np.asarray(local), list(sizes)))
    return np.zeros((sum(sizes),) + np.shape(local)[1:], np.asarray(local).dtype)

  monkeypatch.setattr(suite.parallel, "gather_blocks", fake_gather)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for p in (0, 1):
    pid[0] = p
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    suite.run_chunks(fgsm, x, jnp.asarray(y), key, batch_size=5, across_processes=True)
  fields = ["x_adv", "success", "linf", "l2", "num_grad_evals", "num_forward_evals",
            "num_inverse_evals"]
  for i, name in enumerate(fields):
    (a, sizes_a), (b, sizes_b) = locals_[0][i], locals_[1][i]
    assert sizes_a == sizes_b == [10, 14]  # chunks [0, 2) and [2, 5)
    assert (len(a), len(b)) == (10, 14)
    np.testing.assert_array_equal(np.concatenate([a, b]).astype(np.asarray(
        getattr(one, name)).dtype), np.asarray(getattr(one, name)), err_msg=name)


def test_latent_rows_of_a_certified_flow_carry_the_image_space_bound():
  """|x_adv - x| >= |E(x_adv) - E(x)| / L_e with the certified encoder constant, recomputed by
  hand from the suite's adversarials; a constant far below the true one is caught."""
  import types  # pylint: disable=g-import-not-at-top
  from invjax.robust import certificates  # pylint: disable=g-import-not-at-top
  from invjax.train import recipes  # pylint: disable=g-import-not-at-top
  shape = (4, 4, 2)
  spec = recipes.classifier_spec(
      {"name": "lipschitz_resnet", "stages": (1, 1), "hidden": 4, "coeff": 0.8},
      num_classes=3, image_shape=shape, head="slice", input_offset=-0.5)
  model = recipes.build_classifier(spec)
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (12,) + shape))
  variables = model.init(jax.random.PRNGKey(2), x - 0.5)
  logits = lambda v: np.asarray(model.apply(variables, np.asarray(v) - 0.5)[0])
  y = np.argmax(logits(x), -1)
  lip = certificates.certified_lipschitz(model, variables).encoder
  options = suite.SuiteOptions(norm="l2", latent_iters=2, latent_candidates=2)
  out = suite.run_suite(model, variables, x, y, attacks=("latent_closed_form",),
                        epsilons=(0.5,), options=options, input_offset=-0.5,
                        encoder_lipschitz=lip)
  row = out.summary["attacks"][0]
  x_adv = np.asarray(out.images[0][1][1])  # the grid's second row: the adversarials
  ok = np.argmax(logits(x_adv), -1) != y
  assert ok.sum() >= 6
  enc = lambda v: np.asarray(model.apply(variables, v - 0.5, method="encode"), np.float64)
  dz = np.linalg.norm((enc(x_adv) - enc(x)).reshape(len(x), -1), axis=1)[ok]
  l2 = np.linalg.norm((x_adv - x).reshape(len(x), -1).astype(np.float64), axis=1)
  assert row["median_image_l2_bound"] == pytest.approx(np.median(dz) / lip, rel=1e-4)
  assert row["below_image_bound"] == 0 and row["median_l2_over_bound"] >= 1.0
  assert np.all(l2[ok] >= dz / lip * (1 - 1e-4))
  assert "Image-space cost" in report.markdown(out.summary["attacks"], [0.5], "l2")
  ctx = suite.make_context(model, variables, input_offset=-0.5, options=options)
  res = types.SimpleNamespace(x_adv=x_adv, success=ok, l2=l2)
  assert suite.latent_image_bound(ctx, x, res, lip * 1e-3)["below_image_bound"] > 0
  with pytest.raises(InvjaxError, match="encoder_lipschitz"):
    suite.latent_image_bound(ctx, x, res, 0.0)
