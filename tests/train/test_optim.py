"""make_optimizer: the warm-up check, and the constant schedule against optax's own Adam."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import InvjaxError
from invjax import train
from launch.configs import flow_smoke


def test_make_optimizer_names_a_warmup_longer_than_training():
  config = flow_smoke.get_config()
  config.num_steps, config.warmup_steps = 20, 20
  with pytest.raises(InvjaxError, match="warmup_steps"):
    train.make_optimizer(**train.optimizer_kwargs(config))
  config.warmup_steps = 19
  train.make_optimizer(**train.optimizer_kwargs(config))  # fine


def test_constant_schedule_is_clipped_adam():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  ours = train.make_optimizer(learning_rate=1e-2, num_steps=10, grad_clip=0.5,
                              schedule="constant")
  ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
  s_ours, s_ref = ours.init(params), ref.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p + i) * 3.0, params)
    u_ours, s_ours = ours.update(grads, s_ours, params)
    u_ref, s_ref = ref.update(grads, s_ref, params)
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_warmup_cosine_learning_rate_follows_the_schedule():
  # one parameter with gradient 1 and no clipping: Adam's first update is -lr(0) exactly
  opt = train.make_optimizer(learning_rate=0.1, num_steps=100, warmup_steps=10,
                             grad_clip=1e9)
  params = {"w": jnp.zeros(())}
  state = opt.init(params)
  updates, state = opt.update({"w": jnp.ones(())}, state, params)
  assert float(updates["w"]) == 0.0  # warm-up starts at 0
  with pytest.raises(InvjaxError, match="schedule"):
    train.make_optimizer(learning_rate=0.1, num_steps=10, schedule="step")
