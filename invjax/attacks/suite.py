"""Named attacks on an invertible classifier, run over a list of epsilons: the attack suite.

`run_suite(model, variables, x, y, attacks=(...), epsilons=(...), options=SuiteOptions())`
attacks the correctly classified images among `x` with every named attack and returns one
row per attack (success rate per epsilon, median distances, cost, time) plus, with
"invariance", the metameric attack's summary. Budgeted attacks (fgsm, pgd) run once per
epsilon; minimal-distance attacks (cw and the latent attacks) run once, and their success at
epsilon is `success and distance <= epsilon` (the usual robustness curve).

The batch is split over the local devices (`invjax.parallel.call_sharded`); results are the
same up to float rounding. With `SuiteOptions.attack_batch_size > 0` every attack runs on
chunks of that many points (chunk c with the key `fold_in(key, c)`), and with
`across_processes=True` (a multi-process run) each process attacks its contiguous block of
the chunks (`parallel.process_block`) and the per-example results are all-gathered
(`parallel.gather_blocks`): every process gets the single-process results of the same chunks.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax import parallel
from invjax._src.checks import InvjaxError
from invjax.attacks import cw
from invjax.attacks import gradient
from invjax.attacks import invariance
from invjax.attacks import latent
from invjax.attacks.result import AttackResult


class SuiteOptions(NamedTuple):
  """Budgets of the named attacks (a config sets any of them by name)."""
  norm: str = "linf"
  pgd_steps: int = 10
  cw_steps: int = 50
  cw_search_steps: int = 3
  latent_iters: int = 3
  latent_candidates: int = 3  # classes per Jacobian-aware step (0: all)
  latent_opt_steps: int = 20
  attack_batch_size: int = 0  # > 0: attack chunks of this many points (0: all at once)

  @classmethod
  def from_config(cls, config: Any) -> "SuiteOptions":
    """The options a config (dict or ConfigDict) sets; the others keep their defaults."""
    return cls(**{k: config[k] for k in cls._fields if k in config})


class Context(NamedTuple):
  """What an attack runner needs, as functions of images in [0, 1] (built once, so every
  jitted attack compiles once): the model sees `x + input_offset`."""
  encode: Callable  # x [B, H, W, C] in [0, 1] -> z [B, D]
  decode: Callable  # z -> x in image coordinates
  head: Tuple[Any, Any]  # (A [D, K], b [K]) with logits = z @ A + b
  logits_fn: Callable  # x -> logits
  options: SuiteOptions


def make_context(model, variables, *, input_offset: float, options: SuiteOptions) -> Context:
  """The `Context` of an `InvertibleClassifier` with a linear head."""
  offset = float(input_offset)
  encode = lambda v: model.apply(variables, v + offset, method="encode")
  decode = lambda z: model.apply(variables, z, method="decode") - offset
  a, b = model.apply(variables, method="linear_head")
  logits_fn = jax.jit(lambda v: encode(v) @ a + b)
  return Context(encode, decode, (a, b), logits_fn, options)


def _fgsm(ctx, x, y, eps, key):
  return gradient.fgsm(ctx.logits_fn, x, y, key=key, epsilon=eps, norm=ctx.options.norm)


def _pgd(ctx, x, y, eps, key):
  return gradient.pgd(ctx.logits_fn, x, y, key=key, epsilon=eps, norm=ctx.options.norm,
                      num_steps=ctx.options.pgd_steps)


def _cw(ctx, x, y, eps, key):
  del eps
  return cw.carlini_wagner_l2(ctx.logits_fn, x, y, key=key, num_steps=ctx.options.cw_steps,
                              binary_search_steps=ctx.options.cw_search_steps)


def _latent(method, decode_step="exact"):
  def run(ctx, x, y, eps, key):
    del eps, key
    o = ctx.options
    return latent.latent_attack(ctx.encode, ctx.decode, ctx.head, x, y, method=method,
                                norm=o.norm, num_iters=o.latent_iters,
                                num_steps=o.latent_opt_steps,
                                num_candidates=o.latent_candidates or None,
                                decode_step=decode_step)
  return run


# name -> (runner(ctx, x, y, epsilon or None, key) -> AttackResult, needs_epsilon)
ATTACKS: Dict[str, Tuple[Callable, bool]] = {
    "fgsm": (_fgsm, True),
    "pgd": (_pgd, True),
    "cw": (_cw, False),
    "latent_closed_form": (_latent("closed_form"), False),
    "latent_jacobian": (_latent("jacobian"), False),
    # the latent target decoded to first order (x + dx; no decoder pass)
    "latent_jacobian_linear": (_latent("jacobian", "linear"), False),
    "latent_optimize": (_latent("optimize"), False),
}
EXTRA = ("invariance",)  # attacks with their own summary (no success-vs-epsilon row)


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(out.x_adv)
  return out, time.perf_counter() - t0


_PER_EXAMPLE = (("x_adv", np.float32), ("success", np.uint8), ("linf", np.float32),
                ("l2", np.float32))
_COUNTS = ("num_grad_evals", "num_forward_evals", "num_inverse_evals")


def _host_rows(res, m: int, image_shape) -> Dict[str, np.ndarray]:
  """An `AttackResult` of m points as numpy rows (counts broadcast to [m]); None: no rows."""
  if res is None:
    out = {k: np.zeros((0,) + (tuple(image_shape) if k == "x_adv" else ()), t)
           for k, t in _PER_EXAMPLE}
    return dict(out, **{k: np.zeros((0,), np.int64) for k in _COUNTS})
  out = {k: np.asarray(getattr(res, k)).astype(t) for k, t in _PER_EXAMPLE}
  return dict(out, **{k: np.broadcast_to(np.asarray(getattr(res, k)), (m,)).astype(np.int64)
                      for k in _COUNTS})


def run_chunks(fn: Callable[[Any, Any, jax.Array], Any], x, y, key: jax.Array, *,
               batch_size: int = 0, across_processes: bool = False):
  """`fn(x, y, key) -> AttackResult` on all points at once (`batch_size` 0: the result as it
  is), or on chunks of `batch_size` points, chunk c with the key `fold_in(key, c)`, returned as
  numpy rows (evaluation counts per point); with `across_processes`, in a multi-process run,
  each process computes its block of the chunks and the rows are all-gathered."""
  n, bs = len(x), int(batch_size)
  if bs < 0:
    raise InvjaxError(f"attack_batch_size must be >= 0, got {batch_size}")
  if not bs:
    return fn(x, y, key)
  num_chunks = -(-n // bs)
  count = jax.process_count() if across_processes else 1
  blocks = [parallel.process_block(num_chunks, process_index=p, process_count=count)
            for p in range(count)]
  mine = blocks[jax.process_index() if count > 1 else 0]
  parts = [_host_rows(fn(x[c * bs:(c + 1) * bs], y[c * bs:(c + 1) * bs],
                         jax.random.fold_in(key, c)), len(x[c * bs:(c + 1) * bs]), x.shape[1:])
           for c in range(mine.start, mine.stop)] or [_host_rows(None, 0, x.shape[1:])]
  rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if count > 1:
    sizes = [min(b.stop * bs, n) - min(b.start * bs, n) for b in blocks]
    rows = {k: parallel.gather_blocks(v, sizes) for k, v in rows.items()}
  rows["success"] = rows["success"].astype(bool)
  return AttackResult(**rows)


def run_attack(name: str, ctx: Context, x, y, epsilons: Sequence[float], key, *,
               across_processes: bool = False) -> Tuple[Dict[str, Any], Any]:
  """Success rate per epsilon and summary numbers of one attack; returns (row, a result).

  `across_processes`: see `run_chunks` (with `ctx.options.attack_batch_size > 0`)."""
  attack, budgeted = ATTACKS[name]
  norm = ctx.options.norm

  def runner(eps):  # the batch (or each chunk) split over the local devices (if several)
    return run_chunks(
        lambda xb, yb, k: parallel.call_sharded(lambda a, b: attack(ctx, a, b, eps, k), xb, yb),
        x, y, key, batch_size=ctx.options.attack_batch_size, across_processes=across_processes)

  row: Dict[str, Any] = {"attack": name, "success": {}}
  if budgeted:
    total, last = 0.0, None
    for eps in epsilons:
      runner(float(eps))  # compile outside the timing (same shapes)
      res, secs = _timed(lambda e=eps: runner(float(e)))
      total += secs
      row["success"][str(eps)] = float(np.mean(np.asarray(res.success)))
      last = res
    result, row["seconds_per_example"] = last, total / (len(epsilons) * len(x))
    row["note"] = f"run at each epsilon; distances at eps={epsilons[-1]}"
  else:
    runner(None)
    result, secs = _timed(lambda: runner(None))
    ok = np.asarray(result.success)
    dist = np.asarray(result.linf if norm == "linf" else result.l2)
    for eps in epsilons:
      row["success"][str(eps)] = float(np.mean(ok & (dist <= eps + 1e-7)))
    row["seconds_per_example"] = secs / len(x)
    row["note"] = "minimal-distance attack, thresholded"
  ok = np.asarray(result.success)
  row["success_unbounded"] = float(ok.mean())
  for n in ("l2", "linf"):
    d = np.asarray(getattr(result, n))
    row[f"median_{n}"] = float(np.median(d[ok])) if ok.any() else float("nan")
  for n in ("num_grad_evals", "num_forward_evals", "num_inverse_evals"):
    row[n] = float(np.mean(np.asarray(getattr(result, n))))
  return row, result


def validate(attacks: Sequence[str], norm: str, epsilons: Sequence[float]) -> None:
  """Raises `InvjaxError` for an unknown attack name or norm, or a non-positive epsilon."""
  unknown = [a for a in attacks if a not in ATTACKS and a not in EXTRA]
  if unknown:
    raise InvjaxError(f"unknown attack(s) {unknown}, expected names from "
                      f"{sorted(ATTACKS) + list(EXTRA)}")
  if norm not in ("l2", "linf"):
    raise InvjaxError(f"norm must be 'l2' or 'linf', got {norm!r}")
  epsilons = [float(e) for e in epsilons]
  if not epsilons or min(epsilons) <= 0:
    raise InvjaxError(f"epsilons must be positive, got {epsilons}")


class SuiteResult(NamedTuple):
  """summary: the JSON-able results; images: (file stem, [rows of images], [row titles])."""
  summary: Dict[str, Any]
  images: List[Tuple[str, List[Any], List[str]]]


def run_suite(model, variables, x_all, y_all, *, attacks: Sequence[str],
              epsilons: Sequence[float], options: SuiteOptions = SuiteOptions(),
              input_offset: float = 0.0, seed: int = 0,
              log: Optional[Callable[[str], None]] = None,
              across_processes: bool = False,
              encoder_lipschitz: Optional[float] = None) -> SuiteResult:
  """Attacks the correctly classified images among `x_all` with every named attack.

  Args:
    model, variables: an `InvertibleClassifier` with a linear head and its variables.
    x_all: float images [N, H, W, C] in [0, 1]; y_all: int labels [N].
    attacks: names from `ATTACKS` and `EXTRA`.
    epsilons: positive budgets in `options.norm`.
    options: attack budgets.
    input_offset: the model sees `x + input_offset`.
    seed: the attacks' PRNG seed.
    log: called with one line per finished attack.
    across_processes: in a multi-process run, each process attacks its block of the chunks of
      `options.attack_batch_size` points (`run_chunks`; with 0, every process attacks all);
      every process, called with the same arguments, returns the same result. The clean
      predictions and the invariance attack run whole on every process.
    encoder_lipschitz: an upper bound of the encoder's l2 Lipschitz constant (e.g.
      `invjax.robust.certified_lipschitz(model, variables).encoder`): the latent attacks'
      rows then hold the image distance their latent change must cost
      (`latent_image_bound`).

  Returns:
    `SuiteResult`: summary {clean_accuracy, num_attacked, norm, epsilons, attacks: rows,
    invariance (if asked)} and the image grids to plot.
  """
  validate(attacks, options.norm, epsilons)
  epsilons = [float(e) for e in epsilons]
  if jax.local_device_count() > 1:  # on every device: attacks split their batch over them
    variables = parallel.replicate(variables, parallel.local_data_mesh())
  ctx = make_context(model, variables, input_offset=input_offset, options=options)
  x_all, y_all = jnp.asarray(x_all), jnp.asarray(y_all)
  correct = np.asarray(jnp.argmax(ctx.logits_fn(x_all), -1)) == np.asarray(y_all)
  # Attack only the correctly classified examples (others are adversarial at distance 0).
  x, y = x_all[correct], y_all[correct]
  if len(x) == 0:
    raise InvjaxError("the classifier gets every selected test example wrong; nothing to attack")
  key = jax.random.PRNGKey(seed)
  rows, images = [], []
  for name in attacks:
    if name in EXTRA:
      continue
    row, res = run_attack(name, ctx, x, y, epsilons, key, across_processes=across_processes)
    if encoder_lipschitz is not None and name.startswith("latent"):
      row.update(latent_image_bound(ctx, x, res, encoder_lipschitz))
    if log:
      log(f"{name}: {row}")
    rows.append(row)
    images.append((f"grid_{name}", [x, res.x_adv, diff_image(x, res.x_adv)],
                   ["clean", name, "diff (scaled)"]))
  summary: Dict[str, Any] = {"clean_accuracy": float(correct.mean()),
                             "num_attacked": int(len(x)), "norm": options.norm,
                             "epsilons": epsilons, "attacks": rows}
  if "invariance" in attacks:
    # Metamers need no correct prediction: pair the first and second half of the selection.
    half = len(x_all) // 2
    if half == 0:
      raise InvjaxError("the invariance attack needs at least 2 examples")
    x1, x2 = x_all[:half], x_all[half:2 * half]
    meta = invariance.metameric_attack(ctx.encode, ctx.decode, ctx.head, x1, x2)
    summary["invariance"] = {
        "same_prediction_as_x1": float(np.mean(np.asarray(meta.same_prediction))),
        "max_logit_change": float(jnp.max(jnp.abs(meta.logits_meta - meta.logits_x1))),
        "median_l2_to_x1": float(np.median(np.asarray(meta.l2_to_x1))),
        "median_l2_to_x2": float(np.median(np.asarray(meta.l2_to_x2))),
        "fraction_in_range": float(np.mean(np.asarray(meta.in_range)))}
    images.append(("metamers", [x1, x2, meta.x_meta], ["x1 (class)", "x2 (nuisance)", "metamer"]))
  return SuiteResult(summary, images)


def latent_image_bound(ctx: Context, x, result, encoder_lipschitz: float) -> Dict[str, Any]:
  """What a latent attack's latent change must cost in image space, beside what it cost.

  For an encoder with l2 Lipschitz constant <= L_e, `||x_adv - x||_2 >= ||E(x_adv) - E(x)||_2
  / L_e` (`invjax.robust.latent_to_image_lower_bound`). Over the successful examples: the
  median latent distance, the median bound, the median measured image distance over the
  bound (>= 1), and the examples below the bound (0 unless the constant is not an upper
  bound: a soundness check of the certificate).
  """
  if not encoder_lipschitz > 0:
    raise InvjaxError(f"encoder_lipschitz must be > 0, got {encoder_lipschitz}")
  ok = np.asarray(result.success)
  dz = np.asarray(ctx.encode(jnp.asarray(result.x_adv)) - ctx.encode(jnp.asarray(x)))
  latent_l2 = np.linalg.norm(dz.reshape(len(dz), -1).astype(np.float64), axis=1)[ok]
  image_l2 = np.asarray(result.l2, np.float64)[ok]
  bound = latent_l2 / float(encoder_lipschitz)
  median = lambda v: float(np.median(v)) if len(v) else float("nan")
  ratio = image_l2[bound > 0] / bound[bound > 0]
  return {"encoder_lipschitz": float(encoder_lipschitz), "median_latent_l2": median(latent_l2),
          "median_image_l2_bound": median(bound), "median_l2_over_bound": median(ratio),
          "below_image_bound": int(np.sum(image_l2 < bound * (1 - 1e-4) - 1e-6))}


def diff_image(x, x_adv) -> np.ndarray:
  """`x_adv - x` per example scaled to [0, 1] around grey (0.5) for display."""
  d = np.asarray(x_adv) - np.asarray(x)
  scale = np.maximum(np.abs(d).reshape(len(d), -1).max(1), 1e-12).reshape(-1, 1, 1, 1)
  return 0.5 + 0.5 * d / scale
