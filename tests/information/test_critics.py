"""Critics: scores[i, j] is the critic of the pair (x_i, y_j), checked against a numpy forward
pass of the same parameters."""
import jax
import numpy as np
import pytest

from invjax import InvjaxError
from invjax.information import critics


def np_mlp(params, v):
  layers = sorted(params, key=lambda name: int(name.split("_")[-1]))
  for i, name in enumerate(layers):
    v = v @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
    if i < len(layers) - 1:
      v = np.maximum(v, 0.0)
  return v


def test_separable_and_concat_scores():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 3)).astype(np.float32)
  y = rng.standard_normal((4, 2)).astype(np.float32)
  sep = critics.SeparableCritic(hidden=(8,), embed_dim=6)
  p = jax.jit(sep.init)(jax.random.PRNGKey(0), x, y)
  s = np.asarray(jax.jit(sep.apply)(p, x, y))
  ref = np_mlp(p["params"]["f"], x) @ np_mlp(p["params"]["g"], y).T
  np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
  cat = critics.ConcatCritic(hidden=(8, 8))
  p = jax.jit(cat.init)(jax.random.PRNGKey(1), x, y)
  s = np.asarray(jax.jit(cat.apply)(p, x, y))
  ref = np.array([[np_mlp(p["params"]["t"], np.concatenate([xi, yj]))[0] for yj in y] for xi in x])
  assert s.shape == (5, 4)
  np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(InvjaxError, match="critics take"):
    cat.init(jax.random.PRNGKey(1), x[0], y)
