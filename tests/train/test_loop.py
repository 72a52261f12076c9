"""Training loop: loss goes down, exact resume after a crash, incomplete checkpoints ignored."""
import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import data as data_lib
from invjax import train
from invjax._src.checks import ConvergenceError, InvjaxError


class _TinyNet(nn.Module):
  """BatchNorm (a mutable collection) + dropout (uses the step rng) + linear head."""

  @nn.compact
  def __call__(self, x, train_mode: bool = True):
    h = x.reshape(x.shape[0], -1)
    h = nn.BatchNorm(use_running_average=not train_mode, momentum=0.5)(h)
    h = nn.Dropout(0.2, deterministic=not train_mode)(h)
    return nn.Dense(3)(h)


def _dataset(n=40, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n).astype(np.int32)
  x = rng.integers(0, 60, (n, 2, 2, 3)).astype(np.int64)
  x[np.arange(n), 0, 0, y] += 180  # a learnable signal: the bright channel is the class
  return data_lib.Dataset(x.astype(np.uint8), y, np.arange(n, dtype=np.int32))


MODEL = _TinyNet()
OPT = optax.adam(0.05)


def _loss_fn(params, model_state, batch, rng):
  x = data_lib.to_float(batch["x"])
  logits, new_state = MODEL.apply({"params": params, **model_state}, x, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))
  return loss, (new_state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])})


def _metric_fn(params, model_state, batch):
  logits = MODEL.apply({"params": params, **model_state}, data_lib.to_float(batch["x"]),
                       train_mode=False)
  return {"correct": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}


STEP = train.make_train_step(_loss_fn, OPT, mutable=["batch_stats"])
EVAL = train.make_eval_step(_metric_fn)


def _init_state(seed=0):
  ds = _dataset()
  variables = MODEL.init(jax.random.PRNGKey(seed), data_lib.to_float(ds.x[:2]), train_mode=False)
  params, model_state = train.split_variables(variables)
  return train.TrainState.create(params, OPT, jax.random.PRNGKey(seed + 1), model_state)


def test_loss_goes_down():
  state, ds = _init_state(), _dataset()
  it = train.batch_iterator(jax.random.PRNGKey(0), ds, 8)
  losses = []
  for _ in range(25):
    state, m = STEP(state, next(it))
    losses.append(float(m["loss"]))
  assert int(state.step) == 25
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
  assert set(state.model_state) == {"batch_stats"}


def test_batch_iterator_resumes_mid_epoch():
  ds, key = _dataset(), jax.random.PRNGKey(3)
  full = train.batch_iterator(key, ds, 8)
  seq = [next(full)["y"] for _ in range(12)]  # 5 batches per epoch: crosses 2 epochs
  resumed = train.batch_iterator(key, ds, 8, start_step=7)
  for want in seq[7:]:
    np.testing.assert_array_equal(next(resumed)["y"], want)
  # Each epoch is a permutation of the data from data.batches' own key.
  ep0 = np.concatenate(seq[:5])
  assert sorted(ep0.tolist()) == sorted(ds.y.tolist())


class _Crash(Exception):
  pass


def _crash_at(step):
  def hook(s, state, metrics):
    del state, metrics
    if s == step:
      raise _Crash(f"simulated kill at step {s}")
  return hook


CONFIG = dict(num_steps=7, batch_size=8, log_every=3, checkpoint_every=2, max_to_keep=2,
              eval_batch_size=16, seed=0)


def _strip_time(records):
  return [{k: v for k, v in r.items() if not k.startswith(train.TIME_PREFIX)} for r in records]


def test_resume_is_exact_and_ignores_incomplete_checkpoints(tmp_path):
  ds, test_ds = _dataset(), _dataset(21, seed=1)
  kw = dict(eval_step=EVAL, eval_dataset=test_ds, progress=False)
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
  ref, ref_eval = train.train_loop(_init_state(), STEP, ds, ref_dir, **CONFIG, **kw)
  assert int(ref.step) == 7

  # Killed after step 5: the checkpoint of step 4 is the last finished one, the
  # log of step 3 is written (its window spans the checkpoint at step 2).
  with pytest.raises(_Crash):
    train.train_loop(_init_state(), STEP, ds, run_dir, hooks=[_crash_at(5)], **CONFIG, **kw)
  ckpt_dir = os.path.join(run_dir, train.CHECKPOINT_DIR)
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]
  # A crash mid-save: orbax's temporary directory, and a bare step directory
  # without completion metadata (e.g. a non-atomic file system). Neither may load.
  os.makedirs(os.path.join(ckpt_dir, "6.orbax-checkpoint-tmp-1234", "state"))
  os.makedirs(os.path.join(ckpt_dir, "5", "state"))
  with open(os.path.join(ckpt_dir, "5", "state", "junk"), "w") as f:
    f.write("half written")

  resumed, run_eval = train.train_loop(_init_state(), STEP, ds, run_dir, **CONFIG, **kw)
  assert int(resumed.step) == 7
  assert glob.glob(os.path.join(ckpt_dir, "5.incomplete-*")), os.listdir(ckpt_dir)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ref_log, run_log = train.read_metrics(ref_dir), train.read_metrics(run_dir)
  assert [r["step"] for r in ref_log] == [3, 6, 7]
  assert _strip_time(ref_log) == _strip_time(run_log)
  assert ref_eval == run_eval
  # max_to_keep=2 kept the last two finished checkpoints.
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  assert steps == [6, 7]
  # Independent check of the eval number: all 21 test examples in one call.
  logits = MODEL.apply(ref.variables, data_lib.to_float(test_ds.x), train_mode=False)
  acc = float(np.mean(np.argmax(np.asarray(logits), -1) == test_ds.y))
  np.testing.assert_allclose(ref_eval["correct"], acc, atol=1e-6)
  # Relaunching a finished run does no step and returns the same state.
  again, _ = train.train_loop(_init_state(), STEP, ds, run_dir, **CONFIG, **kw)
  np.testing.assert_array_equal(jax.tree.leaves(again.params)[0],
                                jax.tree.leaves(ref.params)[0])


def test_checkpoint_from_another_model_is_an_error(tmp_path):
  with train.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, _init_state())
  other = train.TrainState.create({"w": jnp.zeros(3)}, OPT, jax.random.PRNGKey(0))
  with train.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(InvjaxError, match="does not match"):
      ckpt.restore_latest(other)


def test_nan_loss_stops_with_clear_error(tmp_path):
  def nan_loss(params, model_state, batch, rng):
    del batch, rng
    return jnp.nan * jnp.sum(params["w"]), (model_state, {})

  opt = optax.sgd(0.1)
  state = train.TrainState.create({"w": jnp.ones(2)}, opt, jax.random.PRNGKey(0))
  step = train.make_train_step(nan_loss, opt)
  cfg = dict(num_steps=4, batch_size=8, log_every=2, checkpoint_every=100)
  with pytest.raises(ConvergenceError, match="loss is nan at step 2"):
    train.train_loop(state, step, _dataset(), str(tmp_path), progress=False, **cfg)
