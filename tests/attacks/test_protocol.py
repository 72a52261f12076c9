"""PGD vs AutoAttack side by side: closed-form robust accuracy of a linear model, the gap on a
masked-gradient model, the transfer columns, and bad inputs. The real attacks run with small
budgets (10 iterations, Square 300 queries)."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.attacks import protocol

KEY = jax.random.PRNGKey(0)
SMALL = dict(attack_steps=10, square_queries=300, batch_size=64)


def _linear(n=40, shape=(4, 4, 3), k=5, seed=0):
  """Logits (x - 0.5) @ W on 4x4x3 images in [0.4, 0.6], labelled by the model (the box never
  binds at the budgets used)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(int(np.prod(shape)), k)).astype(np.float32)
  x = rng.uniform(0.4, 0.6, size=(n,) + shape).astype(np.float32)
  logits = (x.reshape(n, -1) - 0.5) @ w
  y = np.argmax(logits, 1).astype(np.int32)
  return (lambda v: (v.reshape(v.shape[0], -1) - 0.5) @ jnp.asarray(w)), x, y, w, logits


def _min_l2(w, logits, y):
  """Closed-form minimal L2 distance to the other classes' half-spaces (the nearest one)."""
  out = []
  for i, yi in enumerate(y):
    d = [(logits[i, yi] - logits[i, j]) / np.linalg.norm(w[:, yi] - w[:, j])
         for j in range(w.shape[1]) if j != yi]
    out.append(min(d))
  return np.array(out)


def test_robust_accuracy_matches_the_closed_form_on_a_linear_model():
  fn, x, y, w, logits = _linear()
  dist = _min_l2(w, logits, y)
  eps = float(np.median(dist))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # 5 classes: fewer targets than AutoAttack's 9
    (row,) = protocol.compare({"linear": fn}, x, y, key=KEY, budgets=[("l2", eps)],
                              pgd_steps=20, **SMALL)
  assert row.clean_accuracy == 1.0 and row.num_examples == len(x)
  lo, hi = np.mean(dist > 1.02 * eps), np.mean(dist > 0.98 * eps)
  assert lo <= row.autoattack_robust_accuracy <= hi
  # PGD-20's last iterate (no early stop) cannot beat the minimal distance, and misses points
  assert lo <= row.pgd_robust_accuracy
  assert sum(row.broken_by.values()) == round(len(x) * (1 - row.autoattack_robust_accuracy))
  assert row.transfer_pgd is None and row.transfer_autoattack is None


def _quantised_setup(n=24, seed=1):
  shape = (6, 6, 3)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(int(np.prod(shape)), 10)), jnp.float32)

  def masked(v):  # the input rounded to 1/255 through stop_gradient: zero input gradient
    q = jax.lax.stop_gradient(jnp.round(v * 255.0) / 255.0)
    return (q.reshape(q.shape[0], -1) - 0.5) @ w

  x = np.random.default_rng(seed).uniform(0.1, 0.9, (n,) + shape).astype(np.float32)
  return masked, x, np.asarray(jnp.argmax(masked(jnp.asarray(x)), 1))


def test_masked_gradients_show_as_a_gap_and_the_transfer_columns_are_exact():
  masked, x, y = _quantised_setup()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the zero-gradient flag is also a warning
    rows = protocol.compare({"a": masked, "b": masked}, x, y, key=KEY,
                            budgets=[("linf", 16 / 255)], pgd_steps=10, transfer_to="a",
                            **SMALL)
  a, b = rows
  for r in rows:
    assert r.pgd_robust_accuracy - r.autoattack_robust_accuracy >= 0.5  # PGD is blind
    assert r.broken_by.get("square", 0) >= 0.5 * len(x)
    assert any("grad" in k for k in r.flags)
  assert a.transfer_pgd is None and a.transfer_autoattack is None
  # b is the same model as a and a classifies every point right: b's adversarials fool a
  # exactly where they fool b
  assert b.transfer_autoattack == pytest.approx(1 - b.autoattack_robust_accuracy)
  assert b.transfer_pgd == pytest.approx(1 - b.pgd_robust_accuracy)
  table = protocol.markdown(rows, pgd_steps=10, transfer_to="a")
  assert "| L_inf 16/255 | b |" in table and "fool a" in table.splitlines()[0]
  assert "Flags:" in table


def test_bad_inputs_raise():
  fn, x, y, _, _ = _linear(n=4)
  with pytest.raises(checks.InvjaxError, match="transfer_to"):
    protocol.compare({"m": fn}, x, y, key=KEY, budgets=[("l2", 0.1)], transfer_to="t")
  with pytest.raises(checks.InvjaxError, match="epsilon"):
    protocol.compare({"m": fn}, x, y, key=KEY, budgets=[("l2", -0.1)])
  with pytest.raises(checks.InvjaxError, match="norm"):
    protocol.compare({"m": fn}, x, y, key=KEY, budgets=[("l1", 0.1)])
  with pytest.raises(checks.InvjaxError, match="models"):
    protocol.compare({}, x, y, key=KEY, budgets=[("l2", 0.1)])
