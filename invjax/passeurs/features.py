"""Frozen feature extractors of the evaluated pipeline, batched embedding and the feature cache.

A feature extractor is an `Extractor(apply, params, name)` with
`apply(params, x01 [B, H, W, 3]) -> [B, d]` differentiable (the poisoning steps take its
gradient): EfficientNet-Lite0 with ImageNet weights (`efficientnet_extractor`, the pipeline a
buyer evaluates), or untrained random convolutions (`random_conv_extractor`, a cheap baseline and
the stand-in of the tests). `make_extractor(name, ...)` builds one by name (`EXTRACTORS`).

`embed` computes the features of uint8 images batch by batch under one jitted program (with
`across_processes=True`, in a multi-process run, each process its own batches, the features
then gathered on every process: `invjax.passeurs.sharding`); `FeatureCache` keeps the clean
features in memory and on disk, keyed by the extractor's name and the images' content
(`fingerprint`), so a re-run reloads them.
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import compilation
from invjax._src import conv
from invjax._src import io
from invjax._src.checks import InvjaxError
from invjax.passeurs import poison
from invjax.passeurs import sharding


class Extractor(NamedTuple):
  """A frozen, differentiable feature extractor.

  apply: `apply(params, x01 [B, H, W, C] float in [0, 1]) -> [B, d]`; keep one function object
    per extractor (it is a static jit argument: a new object recompiles).
  params: its parameters (pytree).
  name: identifies the extractor in feature-cache keys (include the resolution).
  """
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  name: str


@functools.lru_cache(maxsize=None)
def _efficientnet_apply(resolution: int):
  from invjax.nets import efficientnet  # pylint: disable=g-import-not-at-top
  return functools.partial(efficientnet.features_from_float, resolution=resolution)


def efficientnet_extractor(resolution: int = 32) -> Extractor:
  """EfficientNet-Lite0 (ImageNet weights) penultimate features [B, 1280] at `resolution`."""
  from invjax.nets import efficientnet_convert  # pylint: disable=g-import-not-at-top
  if int(resolution) < 32:
    raise InvjaxError(f"resolution must be >= 32, got {resolution}")
  return Extractor(_efficientnet_apply(int(resolution)), efficientnet_convert.load_pretrained(),
                   f"efficientnet_lite0_r{int(resolution)}")


def _random_conv_apply(params, x01):
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(conv.conv_general_dilated(x01 - 0.5, params["k1"], (2, 2), "SAME",
                                            dimension_numbers=dn))
  h = jax.nn.relu(conv.conv_general_dilated(h, params["k2"], (2, 2), "SAME",
                                            dimension_numbers=dn))
  b, hh, ww, c = h.shape
  h = h.reshape(b, 4, hh // 4, 4, ww // 4, c).mean(axis=(2, 4))
  return h.reshape(b, 16 * c)


def random_conv_extractor(key: jax.Array, channels: int = 16) -> Extractor:
  """Untrained random features: two stride-2 3x3 ReLU convolutions, 4x4 average pooling.

  A cheap baseline and the stand-in for the CNN in tests: `[B, 16 * channels]` features of
  `[B, H, W, 3]` images with H, W divisible by 16.
  """
  k1, k2 = jax.random.split(key)
  params = {"k1": jax.random.normal(k1, (3, 3, 3, channels)) / 3.0,
            "k2": jax.random.normal(k2, (3, 3, channels, channels)) / np.sqrt(9.0 * channels)}
  return Extractor(_random_conv_apply, params,
                   f"random_conv{channels}_{fingerprint(np.asarray(params['k1']))}")


# name -> builder(resolution, seed): the extractors `make_extractor` knows.
EXTRACTORS: Dict[str, Callable[[int, int], Extractor]] = {
    "efficientnet_lite0": lambda resolution, seed: efficientnet_extractor(resolution),
    "random_conv": lambda resolution, seed: random_conv_extractor(jax.random.PRNGKey(seed)),
}


def make_extractor(name: str = "efficientnet_lite0", *, resolution: int = 32,
                   seed: int = 0) -> Extractor:
  """The extractor registered as `name` in `EXTRACTORS`.

  Args:
    name: "efficientnet_lite0" (ImageNet weights, at `resolution`) or "random_conv"
      (untrained random features drawn from `PRNGKey(seed)`).
    resolution: input resolution of EfficientNet-Lite0 (>= 32; ignored by "random_conv").
    seed: seed of the random features (ignored by "efficientnet_lite0").
  """
  if name not in EXTRACTORS:
    raise InvjaxError(f"extractor must be one of {sorted(EXTRACTORS)}, got {name!r}")
  return EXTRACTORS[name](int(resolution), int(seed))


@functools.partial(compilation.jit, static_argnames=("apply",))
def _embed_batch(apply, params, x_uint8):
  return apply(params, x_uint8.astype(jnp.float32) / 255.0)


def embed(extractor: Extractor, x_uint8: np.ndarray, *, batch_size: int = 256,
          progress: bool = False, desc: str = "embed",
          across_processes: bool = False) -> np.ndarray:
  """Features of uint8 images [N, H, W, C] -> float32 [N, d], batched and jitted.

  `across_processes`: in a multi-process run, each process embeds its own batches
  (`sharding.shard_rows`) and every process gets all N features, equal to a single
  process's; every process must call it with the same images.
  """
  x_uint8 = np.asarray(x_uint8)
  if x_uint8.dtype != np.uint8 or x_uint8.ndim != 4:
    raise InvjaxError(f"images must be uint8 [N, H, W, C], got {x_uint8.dtype} {x_uint8.shape}")
  if not len(x_uint8):
    raise InvjaxError("embed: no images")
  fn = lambda xb: _embed_batch(extractor.apply, extractor.params, xb)
  shard = sharding.shard_rows(len(x_uint8), batch_size, across_processes=across_processes)
  f = shard.map(lambda x: poison.batched_apply(fn, [x], batch_size, desc=desc,
                                               progress=progress), [x_uint8])
  chex.assert_rank(f, 2)
  return np.asarray(f, np.float32)


def fingerprint(x: np.ndarray) -> str:
  """Short content hash of an array (shape, dtype and bytes)."""
  h = hashlib.sha1(f"{x.shape}{x.dtype}".encode())
  h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


class FeatureCache:
  """Clean features kept in memory and, when `directory` is set, on disk (atomic `.npy` writes).

  Keyed by extractor name and image content, so a re-run with the same data and extractor
  reloads the features instead of recomputing them.
  """

  def __init__(self, directory: Optional[str] = None):
    self.directory = directory
    self._mem: Dict[str, np.ndarray] = {}

  def path(self, key: str) -> Optional[str]:
    return None if not self.directory else os.path.join(self.directory, f"features_{key}.npy")

  def get(self, extractor: Extractor, x_uint8: np.ndarray, *, batch_size: int = 256,
          progress: bool = False, desc: str = "embed",
          across_processes: bool = False) -> np.ndarray:
    """The features of `x_uint8` under `extractor`: from memory, from disk, or `embed`ded.

    `across_processes`: as in `embed`; the file is read only when every process sees it
    (the processes decide together), and written by process 0.
    """
    key = f"{extractor.name}_{fingerprint(x_uint8)}"
    if key in self._mem:
      return self._mem[key]
    path = self.path(key)
    found = bool(path) and os.path.isfile(path)
    if across_processes and path:
      found = sharding.all_agree(found)
    if found:
      f = np.load(path)
    else:
      f = embed(extractor, x_uint8, batch_size=batch_size, progress=progress, desc=desc,
                across_processes=across_processes)
      if path:
        os.makedirs(self.directory, exist_ok=True)
        io.save_npy(path, f)
    self._mem[key] = f
    return f
