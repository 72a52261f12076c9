"""The Parseval CNN's certified constant against dense Jacobians (an independent reference),
its Parseval value after the retraction, and a certificate that attacks cannot break."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import InvjaxError
from invjax.nets import SmallCNN
from invjax.nets import parseval_cnn
from invjax.robust import cnn_certificates
from invjax.robust import evaluation
from invjax.robust import parseval

SHAPE = (8, 8, 3)
MODEL = parseval_cnn.ParsevalCNN(num_classes=4, widths=(4, 6), blocks=1, logit_scale=2.0)


@jax.jit
def _perturbed_init(key, noise):
  v = MODEL.init(key, jnp.zeros((1,) + SHAPE))
  leaves, tree = jax.tree_util.tree_flatten(v)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  leaves = [l * (1.0 + noise * jax.random.normal(k, l.shape)) for l, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(tree, leaves)


def _variables(seed=0, noise=0.3):
  """Random weights away from the Parseval set, aggregation weights off the simplex."""
  v = _perturbed_init(jax.random.PRNGKey(seed), noise)
  for b in ("ParsevalBlock_0", "ParsevalBlock_1"):
    v["params"][b]["aggregation"] = jnp.array([0.8, -0.6])
  return v


def _jacobian_norms(variables, xs):
  """Largest singular value of the dense Jacobian of `x -> logits` at each image (float64)."""
  f = lambda v: MODEL.apply(variables, v.reshape((1,) + SHAPE))[0]
  jacs = jax.jit(jax.vmap(jax.jacfwd(f)))(jnp.asarray(xs).reshape(len(xs), -1))
  return [float(np.linalg.norm(np.asarray(j, np.float64), ord=2)) for j in jacs]


def test_bound_dominates_the_dense_jacobian_at_every_point():
  v = _variables()
  bound = cnn_certificates.parseval_cnn_lipschitz(MODEL, v, SHAPE)
  xs = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (6,) + SHAPE))
  norms = _jacobian_norms(v, xs)
  assert min(norms) > 0.0
  assert bound.lipschitz >= max(norms), (bound, norms)
  parts = bound.normalisation * bound.stem * np.prod(bound.blocks) * bound.head
  assert bound.lipschitz == pytest.approx(parts)
  assert bound.nominal == pytest.approx(2.0 / min(MODEL.std))
  # each convolution's bound dominates its own dense matrix's norm (a linear map, exact)
  kernel = v["params"]["stem"]["kernel"]
  conv = lambda u: jax.lax.conv_general_dilated(
      u.reshape((1,) + SHAPE), kernel, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")).reshape(-1)
  dense = np.asarray(jax.jacfwd(conv)(jnp.zeros(int(np.prod(SHAPE)))), np.float64)
  assert bound.stem >= np.linalg.norm(dense, ord=2) * (1 - 1e-6)


def test_after_the_retraction_the_bound_is_the_nominal_one():
  v = _variables(noise=0.1)
  v["params"]["ParsevalBlock_0"]["aggregation"] = jnp.array([0.5, 0.5])
  v["params"]["ParsevalBlock_1"]["aggregation"] = jnp.array([0.3, 0.7])
  tx = parseval.parseval_retraction(key=jax.random.PRNGKey(0))
  params, state = v["params"], tx.init(v["params"])
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  step = jax.jit(lambda p, st: tx.update(zeros, st, p))
  for _ in range(10):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  bound = cnn_certificates.parseval_cnn_lipschitz(MODEL, {"params": params}, SHAPE)
  before = cnn_certificates.parseval_cnn_lipschitz(MODEL, v, SHAPE)
  assert before.head > 2.05  # the noise broke the constraint
  assert bound.lipschitz <= bound.nominal * 1.01
  assert max(bound.blocks) <= 1.01 and bound.head == pytest.approx(2.0, rel=1e-3)


def test_certificates_survive_pgd_at_099_radius_and_other_models_raise():
  v = _variables(noise=0.1)
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (24,) + SHAPE))
  y = np.asarray(jnp.argmax(MODEL.apply(v, x), -1))
  report, curves = evaluation.certification_report(
      MODEL, v, x, y, key=jax.random.PRNGKey(0), radii=(0.0, 0.01), methods=("lipschitz",),
      attack_examples=8, attack_steps=20, attack_restarts=3)
  entry = report["methods"]["lipschitz"]
  assert report["clean_accuracy"] == 1.0 and entry["certified_accuracy"][0] == 1.0
  lip = cnn_certificates.parseval_cnn_lipschitz(MODEL, v, SHAPE).lipschitz
  assert entry["lipschitz"] == pytest.approx(lip) and len(entry["block_lipschitz"]) == 2
  assert entry["attack_check"]["violations"] == 0
  assert len(curves) == 1
  with pytest.raises(InvjaxError, match="ParsevalCNN"):
    cnn_certificates.parseval_cnn_lipschitz(SmallCNN(), {}, SHAPE)
  small = SmallCNN(num_classes=4, widths=(4, 4, 4))
  sv = small.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))
  with pytest.raises(InvjaxError, match="smoothing"):
    evaluation.certification_report(small, sv, x, y, key=jax.random.PRNGKey(0), radii=(0.1,))
