"""Parseval retraction and simplex projection against numpy SVDs, a numpy retraction and a
brute-force simplex projection; a Parseval CNN trained a few dozen steps keeps its layers'
singular values (numpy SVD of the matrices as the paper defines them) at 1."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import invjax
from invjax import data as data_lib
from invjax.nets import cnn, parseval_cnn
from invjax.robust import parseval


def _np_retract(w, beta):
  w = np.asarray(w, np.float64)
  return (1 + beta) * w - beta * w @ w.T @ w


def _matrix_with_singular_values(rng, rows, cols, s):
  u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
  v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
  k = min(rows, cols)
  return (u[:, :k] * s) @ v[:, :k].T


def _np_conv_matrix(kernel):
  """HWIO kernel -> sqrt(k_h k_w) * [out, k_h k_w in], written here independently."""
  kh, kw, cin, cout = kernel.shape
  w = np.zeros((cout, kh * kw * cin))
  for o in range(cout):
    w[o] = np.asarray(kernel[..., o], np.float64).ravel()  # C order: (h, w, in)
  return np.sqrt(kh * kw) * w


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5)])
@pytest.mark.parametrize("beta", [0.5, 0.1])
def test_repeated_retraction_drives_singular_values_to_one(shape, beta):
  rng = np.random.default_rng(0)
  s0 = np.linspace(0.8, 1.2, min(shape))
  w = jnp.asarray(_matrix_with_singular_values(rng, *shape, s0), jnp.float32)
  assert np.allclose(np.linalg.svd(np.asarray(w), compute_uv=False), s0[::-1], atol=1e-5)
  for _ in range(60 if beta == 0.1 else 8):
    w = parseval.retract(w, beta)
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=1e-4)


def test_newton_schulz_step_never_leaves_a_singular_value_above_one():
  # beta = 1/2: s -> 1.5 s - 0.5 s^3 <= 1 for every s in [0, 2] (module docstring)
  rng = np.random.default_rng(1)
  s0 = np.array([1.9, 1.5, 1.2, 1.0, 0.7, 0.3])
  w = _matrix_with_singular_values(rng, 6, 8, s0)
  s = np.linalg.svd(np.asarray(parseval.retract(jnp.asarray(w), 0.5)), compute_uv=False)
  np.testing.assert_allclose(np.sort(s), np.sort(np.abs(1.5 * s0 - 0.5 * s0 ** 3)), atol=1e-5)
  assert s.max() <= 1.0 + 1e-6


def _params(rng):
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(7, 4)) * 0.4, jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 5)) * 0.1, jnp.float32)},
          "block": {"aggregation": jnp.asarray([0.5, 0.5], jnp.float32)}}


def test_transform_composes_with_optax():
  rng = np.random.default_rng(2)
  params = _params(rng)
  grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                 params)
  beta, lr = 0.3, 0.05
  tx = optax.chain(optax.sgd(lr), parseval.parseval_retraction(key=jax.random.PRNGKey(0),
                                                              beta=beta))
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  plain = jax.tree_util.tree_map(lambda p, g: np.asarray(p, np.float64) - lr * np.asarray(g),
                                 params, grads)
  # dense kernel [in, out]: W = kernel^T
  np.testing.assert_allclose(new["dense"]["kernel"],
                             _np_retract(plain["dense"]["kernel"].T, beta).T, atol=1e-5)
  np.testing.assert_allclose(new["dense"]["bias"], plain["dense"]["bias"], atol=1e-6)
  # conv: the paper's scaled reshape, retracted, scaled back
  k = plain["conv"]["kernel"]
  w = _np_retract(_np_conv_matrix(k), beta) / 3.0
  want = np.stack([w[o].reshape(3, 3, 2) for o in range(5)], axis=-1)
  np.testing.assert_allclose(new["conv"]["kernel"], want, atol=1e-5)
  # aggregation weights: projected onto the simplex
  np.testing.assert_allclose(new["block"]["aggregation"],
                             _brute_force_simplex(plain["block"]["aggregation"]), atol=1e-6)


def test_sampled_rows_change_only_the_sampled_rows():
  rng = np.random.default_rng(3)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 10)) * 0.2, jnp.float32)
  params = {"c": {"kernel": kernel}}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = parseval.parseval_retraction(key=jax.random.PRNGKey(5), beta=0.5, row_fraction=0.3)
  state = tx.init(params)
  changed_sets = []
  for _ in range(3):
    updates, state = tx.update(zero, state, params)
    new = _np_conv_matrix(np.asarray(kernel) + np.asarray(updates["c"]["kernel"]))
    old = _np_conv_matrix(kernel)
    changed = np.flatnonzero(np.any(np.abs(new - old) > 1e-7, axis=1))
    assert len(changed) == 3, changed  # ceil(0.3 * 10) rows, the others bit-identical
    np.testing.assert_array_equal(np.delete(new, changed, 0), np.delete(old, changed, 0))
    np.testing.assert_allclose(new[changed], _np_retract(old[changed], 0.5), atol=1e-5)
    changed_sets.append(tuple(changed))
  assert len(set(changed_sets)) > 1, "the key in the state must give new rows each step"


def _brute_force_simplex(v):
  """argmin ||a - v|| on the simplex by enumerating supports (KKT: a_S = v_S - t)."""
  v = np.asarray(v, np.float64)
  best, best_d = None, np.inf
  for r in range(1, len(v) + 1):
    for support in itertools.combinations(range(len(v)), r):
      s = list(support)
      a = np.zeros_like(v)
      a[s] = v[s] - (v[s].sum() - 1.0) / r
      if a.min() >= -1e-12 and np.sum((a - v) ** 2) < best_d:
        best, best_d = a, np.sum((a - v) ** 2)
  return best


def test_simplex_projection_matches_brute_force():
  rng = np.random.default_rng(4)
  project = jax.jit(parseval.project_simplex)
  for n in (1, 2, 3, 5, 6):
    for scale in (0.1, 1.0, 5.0):
      v = rng.normal(size=n) * scale
      got = np.asarray(project(jnp.asarray(v, jnp.float32)))
      np.testing.assert_allclose(got, _brute_force_simplex(v), atol=1e-5)
  with pytest.raises(invjax.InvjaxError, match="rank"):
    parseval.project_simplex(jnp.ones((2, 2)))


def test_bad_arguments_raise():
  key = jax.random.PRNGKey(0)
  with pytest.raises(invjax.InvjaxError, match="beta"):
    parseval.parseval_retraction(key=key, beta=1.5)
  with pytest.raises(invjax.InvjaxError, match="row_fraction"):
    parseval.parseval_retraction(key=key, row_fraction=0.0)
  tx = parseval.parseval_retraction(key=key)
  with pytest.raises(invjax.InvjaxError, match="parameters"):
    tx.update({"kernel": jnp.ones((2, 2))}, tx.init(None))
  assert parseval.kernel_factor((3, 3), 2) == 4 and parseval.kernel_factor((3, 3)) == 9


def test_parseval_cnn_keeps_singular_values_at_one_while_training():
  """30 Adam steps (lr 3e-3) with the Newton-Schulz retraction (beta 1/2) after each.

  The bound is on the upper side, `max s <= 1 + 1e-2`, because that is the guarantee the
  network's Lipschitz constant rests on (and beta = 1/2 gives it after every step). The
  lower side is checked too, within 2e-2: the matrices stay tight frames (no direction is
  shrunk), which the retraction pulls back quadratically but does not bound exactly.
  """
  from invjax.train import TrainState, make_optimizer, make_train_step, split_variables
  train_ds = data_lib.load("cifar10_mini", "train")
  model = parseval_cnn.ParsevalCNN(widths=(8, 16), blocks=1)
  params, model_state = split_variables(cnn.init(model, jax.random.PRNGKey(0)))
  adam = make_optimizer(learning_rate=3e-3, num_steps=30, warmup_steps=2)
  states = {}
  for name, tx in (("parseval", optax.chain(adam, parseval.parseval_retraction(
      key=jax.random.PRNGKey(1)))), ("plain", adam)):
    state = TrainState.create(params, tx, jax.random.PRNGKey(2), model_state)
    step = make_train_step(cnn.make_loss_fn(model), tx)
    for i in range(30):
      batch = {"x": train_ds.x[32 * i: 32 * i + 32], "y": train_ds.y[32 * i: 32 * i + 32]}
      state, metrics = step(state, batch)
      assert np.isfinite(float(metrics["loss"]))
    states[name] = state

  def spectra(p):
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
      name = jax.tree_util.keystr(path)
      leaf = np.asarray(leaf, np.float64)
      if name.endswith("['kernel']") and leaf.ndim == 4:
        out[name] = np.linalg.svd(_np_conv_matrix(leaf), compute_uv=False)
      elif name.endswith("['kernel']"):
        out[name] = np.linalg.svd(leaf.T, compute_uv=False)
    return out

  got = spectra(states["parseval"].params)
  assert len(got) == 7  # stem, 2 x 2 block convs, 1 shortcut, head
  worst_max = max(s.max() for s in got.values())
  worst_min = min(s.min() for s in got.values())
  assert worst_max <= 1 + 1e-2, {k: s.max() for k, s in got.items()}
  assert worst_min >= 1 - 2e-2, {k: s.min() for k, s in got.items()}
  # the check can fail: the same steps without the retraction leave the unit sphere
  plain = spectra(states["plain"].params)
  assert max(s.max() for s in plain.values()) > 1 + 1e-2
  # the aggregation weights stay on the simplex
  for block in ("ParsevalBlock_0", "ParsevalBlock_1"):
    a = np.asarray(states["parseval"].params[block]["aggregation"])
    assert a.min() >= 0 and abs(a.sum() - 1) < 1e-5, a
  # the library's measurement agrees with numpy
  lib = parseval.layer_singular_values(states["parseval"].params)
  assert len(lib) == len(got)
  np.testing.assert_allclose(max(s.max() for s in lib.values()), worst_max, atol=1e-4)
