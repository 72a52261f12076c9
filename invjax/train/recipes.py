"""The trainings the launch scripts run: flow density, invertible classifier, CNN teacher.

Each recipe initialises the model, builds the loss, runs the resumable `train_loop` in
`workdir`, evaluates on the test split and writes `results.json` (and `model.json` for the
invertible classifier, so that `restore_classifier(workdir)` rebuilds it without its
config; `restore_cnn` does the same for a CNN whose launcher wrote its `cnn_spec`). Every option is an explicit keyword with a documented default; the launch configs
own the values they set. `loop` keywords go to `train_loop` (num_steps, batch_size,
log_every, ...).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax import data as data_lib
from invjax._src import io
from invjax._src.checks import InvjaxError
from invjax.data import augment as augment_lib
from invjax.flows import classifier as classifier_lib
from invjax.flows import lipschitz_resnet
from invjax.flows import multiscale
from invjax.flows import registry
from invjax.information import latent as information_latent
from invjax.nets import cnn
from invjax.nets import parseval_cnn
from invjax.robust.certificates import certify as certify_classifier
from invjax.robust import adversarial_training
from invjax.robust import independence
from invjax.robust import margin_training
from invjax.train.checkpoint import restore_variables
from invjax.train.loop import train_loop
from invjax.train.state import (TrainState, count_params, make_eval_step, make_train_step,
                                split_variables)

RESULTS_FILE = "results.json"
MODEL_FILE = "model.json"


def _init(model: nn.Module, x_init: jax.Array, init_key: jax.Array, state_key: jax.Array,
          optimizer: optax.GradientTransformation) -> TrainState:
  """A step-0 `TrainState` of `model` initialised on `x_init` (ActNorm's data-dependent init)."""
  variables = jax.jit(model.init)({"params": init_key, "logdet": init_key}, x_init)
  params, model_state = split_variables(variables)
  return TrainState.create(params, optimizer, state_key, model_state)


def _finish(workdir: str, results: Dict[str, Any], t_start: float) -> Dict[str, Any]:
  results["wall_s"] = time.time() - t_start
  io.write_json(os.path.join(workdir, RESULTS_FILE), results)
  return results


# ----------------------------------------------------------------------------- flows


def train_flow(model: nn.Module, train_ds: data_lib.Dataset, test_ds: data_lib.Dataset,
               workdir: str, *, optimizer: optax.GradientTransformation, name: str = "flow",
               seed: int = 0, init_batch_size: int = 128, mesh=None, progress: bool = True,
               **loop: Any) -> Dict[str, Any]:
  """Density estimation: minimises bits/dim of dequantised pixels `(x + u) / 256 - 0.5`.

  Returns (and writes to `workdir/results.json`) `{"test_bits_per_dim", "step", "model",
  "wall_s"}`; raises `InvjaxError` when the test bits/dim is not finite.
  """
  t_start = time.time()
  num_dims = int(np.prod(train_ds.x.shape[1:]))
  init_key, deq_key, state_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  x_init = multiscale.uniform_dequantize(deq_key, train_ds.x[:init_batch_size]) - 0.5
  state = _init(model, x_init, init_key, state_key, optimizer)
  mutable = list(state.model_state)
  logging.info("model %s: %d parameters", name, count_params(state.params))

  def bpd_per_example(params, model_state, x_uint8, rng):
    deq_rng, logdet_rng = jax.random.split(rng)
    x = multiscale.uniform_dequantize(deq_rng, x_uint8) - 0.5
    (z, log_det), new_state = model.apply({"params": params, **model_state}, x,
                                          rngs={"logdet": logdet_rng}, mutable=mutable)
    log_px = multiscale.standard_normal_logpdf(z) + log_det
    return multiscale.bits_per_dim(log_px, num_dims), new_state

  def loss_fn(params, model_state, batch, rng):
    bpd, new_state = bpd_per_example(params, model_state, batch["x"], rng)
    loss = jnp.mean(bpd)
    return loss, (new_state, {"bits_per_dim": loss})

  def metric_fn(params, model_state, batch):
    # A fixed dequantisation / estimator key: the same test number at every evaluation.
    bpd, _ = bpd_per_example(params, model_state, batch["x"], jax.random.PRNGKey(0))
    return {"bits_per_dim": bpd}

  state, metrics = train_loop(
      state, make_train_step(loss_fn, optimizer, mutable=True, donate=True), train_ds, workdir,
      eval_step=make_eval_step(metric_fn), eval_dataset=test_ds, mesh=mesh, progress=progress,
      seed=seed, **loop)
  results = {"test_bits_per_dim": metrics["bits_per_dim"], "step": int(state.step),
             "model": name}
  if not math.isfinite(results["test_bits_per_dim"]):
    raise InvjaxError(f"test bits/dim is {results['test_bits_per_dim']}")
  return _finish(workdir, results, t_start)


# ----------------------------------------------------------------------------- classifiers


def classifier_spec(model_config: Mapping[str, Any], *, num_classes: int,
                    image_shape: Sequence[int], head: str = "slice",
                    slice_dims: Optional[int] = None, input_offset: float = -0.5
                    ) -> Dict[str, Any]:
  """The JSON description of an invertible classifier that `build_classifier` builds.

  `model_config` is the flow's `{"name": ..., **constructor kwargs}`; the model sees
  `x + input_offset` for images x in [0, 1].
  """
  flow = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  flow = {k: list(v) if isinstance(v, tuple) else v for k, v in flow.items()}
  return {"flow": flow, "num_classes": int(num_classes),
          "image_shape": [int(s) for s in image_shape], "head": head,
          "slice_dims": None if slice_dims is None else int(slice_dims),
          "input_offset": float(input_offset)}


def build_classifier(spec: Mapping[str, Any]) -> classifier_lib.InvertibleClassifier:
  """The `InvertibleClassifier` (flow + head) a `classifier_spec` describes."""
  image_shape = tuple(spec["image_shape"])
  flow = registry.from_config(spec["flow"], image_shape)
  return classifier_lib.make_classifier(flow, spec["num_classes"], image_shape,
                                        head=spec["head"], slice_dims=spec["slice_dims"])


def restore_classifier(workdir: str, spec: Optional[Mapping[str, Any]] = None
                       ) -> Tuple[classifier_lib.InvertibleClassifier, Dict[str, Any],
                                  Dict[str, Any], int]:
  """(model, variables, spec, step) of the classifier trained in `workdir`.

  The model comes from `workdir/model.json` (written by `train_classifier`), or from `spec`
  for a run that has none; the variables from the last finished checkpoint.
  """
  path = os.path.join(workdir, MODEL_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      spec = json.load(f)
  elif spec is None:
    raise InvjaxError(f"{workdir} has no {MODEL_FILE}; pass the classifier's spec "
                      "(invjax.train.recipes.classifier_spec)")
  variables, step = restore_variables(workdir)
  return build_classifier(spec), variables, dict(spec), step


def train_classifier(spec: Mapping[str, Any], train_ds: data_lib.Dataset,
                     test_ds: data_lib.Dataset, workdir: str, *,
                     optimizer: optax.GradientTransformation, nll_weight: float = 0.0,
                     augment: bool = False, report_bits_per_dim: bool = False,
                     lipschitz_margin: float = 0.0, margin_variant: str = "tsuzuku",
                     noise_sigma: float = 0.0, independence_weight: float = 0.0,
                     nuisance_learning_rate: float = 0.5,
                     report_nuisance_information: bool = False, adversarial: str = "",
                     adversarial_epsilon: float = 8 / 255, adversarial_steps: int = 7,
                     adversarial_fraction: float = 0.5, seed: int = 0,
                     init_batch_size: int = 128, mesh=None, progress: bool = True,
                     **loop: Any) -> Dict[str, Any]:
  """Invertible classifier: cross-entropy (or a Lipschitz-margin loss) + `nll_weight` * bits/dim.

  Args:
    spec: from `classifier_spec` (written to `workdir/model.json`).
    train_ds, test_ds: uint8 datasets.
    workdir: metrics, checkpoints, `results.json`, `model.json`; a rerun resumes.
    optimizer: e.g. `invjax.train.make_optimizer(...)`.
    nll_weight: weight of the flow's bits/dim (0: plain classifier); a density needs
      dequantised inputs, so `nll_weight > 0` trains on `(x + u) / 256`.
    augment: random flips and crops (`invjax.data.flip_and_crop`) of training images.
    report_bits_per_dim: also log and evaluate bits/dim.
    lipschitz_margin: the l2 radius epsilon of Lipschitz-margin training (0: cross-entropy):
      the loss is `invjax.robust.margin_training.margin_loss` with the network's current
      constant (`lipschitz_estimate`, logged as "lipschitz"); needs a certifiable flow
      (`lipschitz_resnet` or `iresnet`). The results then hold the certified constant
      (`invjax.robust.certificates.certified_lipschitz`) and the certified test accuracy at
      epsilon.
    margin_variant: `"tsuzuku"` (shifted non-true logits) or `"gloro"` (bottom class).
    noise_sigma: Gaussian noise `x + sigma * N(0, I)` on training inputs
      (`invjax.data.augment.gaussian_noise`; randomized smoothing's base classifier).
    independence_weight: weight of the independence cross-entropy (Jacobsen et al. 2019;
      `invjax.robust.independence`; 0: off): the encoder also maximises the cross-entropy
      of a linear nuisance classifier that learns, adversarially, to predict the label from
      the latent part the head ignores (logged as "nuisance_ce", "nuisance_accuracy").
    nuisance_learning_rate: the nuisance classifier's SGD step size (one step per step).
    report_nuisance_information: measure the label information of the nuisance latent on the
      test split (`invjax.information.nuisance_label_information`): results gain
      "nuisance_ce_bound" and "nuisance_ksg" (nats).
    adversarial: adversarial training (`invjax.robust.adversarial_training`; "": off):
      "pgd" (Madry et al. 2018) or "latent" (the Jacobian-aware latent step, linear decode,
      stretched to the budget); examples made on the current model, without gradient.
    adversarial_epsilon: their L_inf radius.
    adversarial_steps: PGD steps, or the latent attack's re-linearisations.
    adversarial_fraction: the share of each batch replaced by adversarial examples (logged
      "adversarial_accuracy": the training accuracy on them).
    seed: initialisation, per-step rng and data order.
    init_batch_size: images for the data-dependent initialisation.
    mesh: optional data-parallel mesh (`invjax.parallel`).
    progress: tqdm bar.
    **loop: `train_loop` keywords (num_steps, batch_size, log_every, ...).

  Returns:
    `{"test_accuracy", "step", "model", "wall_s"}` (+ "test_bits_per_dim" when reported; +
    "certified_lipschitz", "certified_accuracy", "lipschitz_margin" with a margin; +
    "nuisance_ce_bound", "nuisance_ksg" when reported).
  """
  t_start = time.time()
  margin_training.check_variant(margin_variant)
  if not (lipschitz_margin >= 0 and noise_sigma >= 0 and independence_weight >= 0):
    raise InvjaxError(f"lipschitz_margin, noise_sigma and independence_weight must be >= 0, "
                      f"got {lipschitz_margin}, {noise_sigma} and {independence_weight}")
  model = build_classifier(spec)
  offset = float(spec["input_offset"])
  generate = adversarial and adversarial_training.make_generator(
      adversarial, model, epsilon=adversarial_epsilon, num_steps=adversarial_steps,
      input_offset=offset)
  if lipschitz_margin:
    lipschitz_resnet.block_scale(model.flow)  # raises unless the flow is certifiable
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, MODEL_FILE), dict(spec))
  init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))

  def inputs(x_uint8, rng, training):
    aug_rng, deq_rng = jax.random.split(rng)
    if nll_weight:  # a density needs dequantised inputs
      x = multiscale.uniform_dequantize(deq_rng, x_uint8)
    else:
      x = data_lib.to_float(x_uint8)
    if training and augment:
      x = data_lib.flip_and_crop(aug_rng, x)
    if training and noise_sigma:
      x = augment_lib.gaussian_noise(jax.random.fold_in(aug_rng, 1), x, sigma=noise_sigma)
    return x + offset

  x_init = data_lib.to_float(train_ds.x[:init_batch_size]) + offset
  state = _init(model, x_init, init_key, state_key, optimizer)
  mutable = list(state.model_state)
  if independence_weight:  # the nuisance classifier's parameters ride in model_state
    zn = jax.eval_shape(lambda p, v: independence.nuisance_features(
        model, p, model.apply({"params": p, **state.model_state}, v, method="encode",
                              rngs={"logdet": init_key})),
        state.params, x_init)
    state = state.replace(model_state={
        **state.model_state, independence.NUISANCE_COLLECTION:
        independence.init_nuisance_classifier(zn.shape[1], model.num_classes)})
  name = f"{spec['flow']['name']}/{spec['head']}"
  logging.info("classifier %s: %d parameters, latent %s", name, count_params(state.params),
               model.latent_shape)

  def forward(params, model_state, x, rng):
    model_state = {k: v for k, v in model_state.items() if k in mutable}
    return model.apply({"params": params, **model_state}, x, rngs={"logdet": rng},
                       mutable=mutable)

  def loss_fn(params, model_state, batch, rng):
    in_rng, fwd_rng = jax.random.split(rng)
    x = inputs(batch["x"], in_rng, training=True)
    if generate:
      n_adv = max(1, int(round(adversarial_fraction * x.shape[0])))
      x = adversarial_training.adversarial_batch(
          generate, {"params": params, **{k: model_state[k] for k in mutable}}, x - offset,
          batch["y"],
          jax.random.fold_in(in_rng, 2), fraction=adversarial_fraction) + offset
    (logits, z, log_det), new_state = forward(params, model_state, x, fwd_rng)
    loss, metrics = classifier_lib.hybrid_loss(logits, batch["y"], z, log_det,
                                               nll_weight=nll_weight)
    if lipschitz_margin:
      lip = margin_training.lipschitz_estimate(model, {"params": params, **new_state})
      metrics["margin_loss"] = margin_training.margin_loss(
          logits, batch["y"], lipschitz=lip, epsilon=lipschitz_margin, variant=margin_variant)
      metrics["lipschitz"] = lip
      loss = metrics["margin_loss"] + (nll_weight * metrics["bits_per_dim"] if nll_weight else 0.0)
    if independence_weight:
      term, nuisance, ice = independence.independence_step(
          model_state[independence.NUISANCE_COLLECTION],
          independence.nuisance_features(model, params, z), batch["y"],
          learning_rate=nuisance_learning_rate)
      loss = loss + independence_weight * term
      new_state = {**new_state, independence.NUISANCE_COLLECTION: nuisance}
      metrics.update(ice)
    if generate:
      metrics["adversarial_accuracy"] = jnp.mean(
          jnp.argmax(logits[:n_adv], -1) == batch["y"][:n_adv])
    if not report_bits_per_dim:
      metrics.pop("bits_per_dim")
    return loss, (new_state, metrics)

  def metric_fn(params, model_state, batch):
    rng = jax.random.PRNGKey(0)  # fixed: the same test numbers at every evaluation
    x = inputs(batch["x"], rng, training=False)
    (logits, z, log_det), _ = forward(params, model_state, x, rng)
    out = {"accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}
    if report_bits_per_dim:
      out["bits_per_dim"] = classifier_lib.nll_bits_per_dim(z, log_det)
    return out

  state, metrics = train_loop(
      state, make_train_step(loss_fn, optimizer, mutable=True, donate=True), train_ds, workdir,
      eval_step=make_eval_step(metric_fn), eval_dataset=test_ds, mesh=mesh, progress=progress,
      seed=seed, **loop)
  results = {"test_accuracy": metrics["accuracy"], "step": int(state.step), "model": name}
  if "bits_per_dim" in metrics:
    results["test_bits_per_dim"] = metrics["bits_per_dim"]
  if lipschitz_margin:
    cert = certify_classifier(model, state.variables, data_lib.to_float(test_ds.x), test_ds.y,
                               lipschitz_margin, input_offset=offset)
    results.update(certified_lipschitz=cert.lipschitz, lipschitz_margin=float(lipschitz_margin),
                   certified_accuracy=float(cert.certified_accuracy[0]))
  if adversarial:
    results.update(adversarial=adversarial, adversarial_epsilon=float(adversarial_epsilon),
                   adversarial_steps=int(adversarial_steps))
  if independence_weight:
    results["independence_weight"] = float(independence_weight)
  if report_nuisance_information:
    variables = {k: v for k, v in state.variables.items()
                 if k != independence.NUISANCE_COLLECTION}
    info = information_latent.nuisance_label_information(
        model, variables, data_lib.to_float(test_ds.x) + offset, jnp.asarray(test_ds.y),
        key=jax.random.PRNGKey(seed), rngs={"logdet": jax.random.PRNGKey(0)})
    results.update(nuisance_ce_bound=float(info.ce_bound), nuisance_ksg=float(info.ksg))
  return _finish(workdir, results, t_start)


# ----------------------------------------------------------------------------- CNN teachers


def train_cnn(model: nn.Module, train_ds: data_lib.Dataset, test_ds: data_lib.Dataset,
              workdir: str, *, optimizer: optax.GradientTransformation, augment: bool = False,
              weight_decay: float = 0.0, noise_sigma: float = 0.0, seed: int = 0, mesh=None,
              progress: bool = True, **loop: Any) -> Tuple[Dict[str, Any], float]:
  """A (non-invertible) CNN classifier of `invjax.nets.cnn`, e.g. a distillation teacher.

  `augment`: random flips and crops; `noise_sigma`: Gaussian noise `x + sigma * N(0, I)` on
  training inputs (`invjax.data.augment.gaussian_noise`), the base classifier of randomized
  smoothing.

  Returns (variables, test accuracy); a rerun in the same `workdir` resumes or reloads.
  """
  key = jax.random.PRNGKey(seed)
  variables = jax.jit(lambda k: cnn.init(model, k, train_ds.x.shape[1:]))(key)
  params, model_state = split_variables(variables)
  state = TrainState.create(params, optimizer, jax.random.fold_in(key, 1), model_state)
  logging.info("teacher %s: %d parameters", type(model).__name__, count_params(params))
  loss_fn = cnn.make_loss_fn(model, augment_fn=_cnn_augment(augment, noise_sigma),
                             weight_decay=weight_decay)
  state, metrics = train_loop(
      state, make_train_step(loss_fn, optimizer, mutable=True, donate=True), train_ds, workdir,
      eval_step=make_eval_step(cnn.make_metric_fn(model)), eval_dataset=test_ds, mesh=mesh,
      progress=progress, seed=seed, **loop)
  return state.variables, metrics["accuracy"]


CNN_MODELS = {"parseval_cnn": parseval_cnn.ParsevalCNN, **cnn.TEACHERS}


def cnn_spec(name: str, *, num_classes: int, **kwargs: Any) -> Dict[str, Any]:
  """The JSON description of a CNN of `CNN_MODELS` (`model.json`; `restore_cnn` reads it)."""
  if name not in CNN_MODELS:
    raise InvjaxError(f"unknown CNN {name!r}; known: {sorted(CNN_MODELS)}")
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
  return {"name": name, "num_classes": int(num_classes), "kwargs": kwargs}


def restore_cnn(workdir: str) -> Tuple[nn.Module, Dict[str, Any], Dict[str, Any], int]:
  """(model, variables, spec, step) of the CNN trained in `workdir` (its `model.json`)."""
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.isfile(path):
    raise InvjaxError(f"{workdir} has no {MODEL_FILE} (written by launch/train_cnn.py)")
  with open(path) as f:
    spec = json.load(f)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
  model = CNN_MODELS[spec["name"]](num_classes=spec["num_classes"], **kwargs)
  variables, step = restore_variables(workdir)
  return model, variables, spec, step


def _cnn_augment(augment: bool, noise_sigma: float):
  """The CNN's `augment_fn(key, x)`: flips and crops and / or Gaussian noise (None: neither)."""
  if not noise_sigma >= 0:
    raise InvjaxError(f"noise_sigma must be >= 0, got {noise_sigma}")
  if not noise_sigma:
    return data_lib.flip_and_crop if augment else None

  def augment_fn(key, x):
    if augment:
      x = data_lib.flip_and_crop(key, x)
    return augment_lib.gaussian_noise(jax.random.fold_in(key, 1), x, sigma=noise_sigma)

  return augment_fn
