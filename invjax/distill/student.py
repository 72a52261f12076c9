"""Training an invertible student on a teacher, and how closely it follows the teacher."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from absl import logging
import flax.linen as nn
import jax
import numpy as np
import optax

from invjax import data as data_lib
from invjax.distill import core
from invjax.train.state import count_params

LogitsFn = Callable[[jax.Array], jax.Array]


def train_student(model: nn.Module, teacher_fn: LogitsFn, train_ds: data_lib.Dataset,
                  workdir: str, *, optimizer: optax.GradientTransformation, num_steps: int,
                  batch_size: int, seed: int = 0, init_batch_size: int = 128,
                  input_offset: float = 0.0, temperature: float = 4.0, alpha: float = 0.0,
                  augment: bool = False, jacobian_weight: float = 0.0,
                  jacobian_class: str = "teacher", jacobian_temperature: float = 1.0,
                  loop_options: Optional[Mapping[str, Any]] = None, progress: bool = True,
                  mesh=None) -> Tuple[Dict[str, Any], LogitsFn]:
  """Initialises `model` on the first training images and distils `teacher_fn` into it.

  Resumable in `workdir` (`invjax.distill.distill` with a workdir). The student sees
  `x - input_offset`; `augment` adds random flips and crops; the Jacobian-matching options
  are `invjax.distill.distill`'s.

  Returns:
    (variables, jitted `x in [0, 1] -> logits` of the trained student).
  """
  key = jax.random.PRNGKey(seed + 1)
  x_init = data_lib.to_float(train_ds.x[:init_batch_size]) - input_offset
  variables = jax.jit(model.init)({"params": key, "logdet": key}, x_init)
  logging.info("student: %d parameters", count_params(variables["params"]))
  variables, _ = core.distill(
      model, variables, teacher_fn, train_ds, key=jax.random.fold_in(key, 1),
      num_steps=num_steps, batch_size=batch_size, optimizer=optimizer,
      temperature=temperature, alpha=alpha, input_offset=input_offset,
      augment_fn=data_lib.flip_and_crop if augment else None,
      jacobian_weight=jacobian_weight, jacobian_class=jacobian_class,
      jacobian_temperature=jacobian_temperature, workdir=workdir, loop_options=loop_options,
      progress=progress, mesh=mesh)
  student_fn = jax.jit(core.student_logits_fn(model, variables, input_offset=input_offset))
  return variables, student_fn


def fidelity(teacher_fn: LogitsFn, student_fn: LogitsFn, x_test, y_test, *,
             batch_size: int = 256) -> Dict[str, float]:
  """Student accuracy on (x_test, y_test) and teacher/student agreement (same argmax)."""
  x_test = np.asarray(x_test)
  pred = np.concatenate([np.asarray(student_fn(x_test[i:i + batch_size])).argmax(1)
                         for i in range(0, len(x_test), batch_size)])
  return {"student_accuracy": float(np.mean(pred == np.asarray(y_test))),
          "agreement": core.agreement(teacher_fn, student_fn, x_test, batch_size=batch_size)}
