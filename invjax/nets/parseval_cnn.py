"""A small Parseval residual CNN (Cisse et al. 2017) for CIFAR-10, without batch norm.

Wide-ResNet-like (Zagoruyko & Komodakis 2016): a 3x3 stem convolution, then per width a
stage of `blocks` residual blocks, the stages after the first starting with a 2x2 average
pool; ReLU, global average pool, a dense head. A block is

    y = alpha_0 * shortcut(x) + alpha_1 * conv3x3(relu(conv3x3(relu(x))))

with `shortcut` the identity, or a 1x1 convolution where the width changes, and `alpha`
(the "aggregation" parameter, initialised to (1/2, 1/2)) the paper's convex aggregation.
Trained with `invjax.robust.parseval.parseval_retraction` chained after the optimiser, every
convolution and the head are kept 1-Lipschitz (module docstring there) and alpha on the
simplex, so each block is 1-Lipschitz (a convex combination of 1-Lipschitz maps: the
triangle inequality). There is no batch norm: at test time it is a per-channel affine map
whose Lipschitz constant, max |gamma| / sigma, is not controlled by the retraction.
Kernels start as (scaled) orthogonal matrices, already Parseval: `conv_matrix(kernel, k*k)`
of `invjax.robust.parseval` has orthonormal rows or columns at initialisation.

The l2 Lipschitz constant of the logits in pixel space is then at most
`logit_scale / min(std)` (the input normalisation divides by std: 1 / min(std) is about 4.1
for CIFAR-10): the poolings are scaled sums with constant exactly 1 (`pool_2x2`,
`global_pool`), the ReLUs and Parseval layers contribute at most 1 each.

`ParsevalCNN` has the teachers' interface (`invjax.nets.cnn`): `apply(variables, x,
train=False) -> logits` for float images in [0, 1], so `cnn.init`, `cnn.make_loss_fn`,
`cnn.make_metric_fn` and `invjax.train.recipes.train_cnn` take it unchanged.
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from invjax._src import conv
from invjax.nets import cnn

# The parameter name `invjax.robust.parseval.default_param_filter` keeps on the simplex
# (not imported: invjax.robust may import invjax.nets).
AGGREGATION = "aggregation"


def _orthogonal_conv(features: int, size: int, name: str | None = None) -> nn.Module:
  """A stride-1 "SAME" convolution whose `conv_matrix(kernel, size**2)` starts orthogonal."""
  return conv.Conv(features, (size, size), padding="SAME", name=name,
                   kernel_init=nn.initializers.orthogonal(scale=1.0 / size))


def pool_2x2(h: jax.Array) -> jax.Array:
  """2x2 sum pooling with stride 2 divided by 2 = sqrt(4) (NHWC, even H and W).

  l2 Lipschitz constant exactly 1 (Cauchy-Schwarz: ||x_1 + ... + x_4|| <= 2 ||(x_1..x_4)||,
  equality for equal x_i), where the 2x2 mean has 1/2: the mean would shrink the signal
  by 2 per stage for no gain in the bound's tightness.
  """
  b, height, width, c = h.shape
  return jnp.sum(h.reshape(b, height // 2, 2, width // 2, 2, c), axis=(2, 4)) / 2.0


def global_pool(h: jax.Array) -> jax.Array:
  """Sum over H and W divided by sqrt(H W): l2 Lipschitz constant exactly 1 (as `pool_2x2`)."""
  return jnp.sum(h, axis=(1, 2)) / jnp.sqrt(float(h.shape[1] * h.shape[2]))


class ParsevalBlock(nn.Module):
  """A residual block whose shortcut and branch are convex-aggregated (module docstring)."""
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if x.shape[-1] != self.width:
      shortcut = _orthogonal_conv(self.width, 1, name="shortcut")(x)
    h = _orthogonal_conv(self.width, 3)(nn.relu(x))
    h = _orthogonal_conv(self.width, 3)(nn.relu(h))
    alpha = self.param(AGGREGATION, lambda _, shape: jnp.full(shape, 0.5), (2,))
    return alpha[0] * shortcut + alpha[1] * h


class ParsevalCNN(nn.Module):
  """Stem, `len(widths)` stages of `blocks` Parseval blocks, GAP, dense head.

  Attributes:
    num_classes: number of logits.
    widths: channels of each stage; the stages after the first halve the resolution.
    blocks: residual blocks per stage.
    logit_scale: a fixed factor on the logits (a known Lipschitz factor, not trained): the
      softmax temperature of a network whose layers cannot grow its logits. It scales the
      margin and the Lipschitz constant alike, so it leaves a certified radius unchanged.
    mean, std: per-channel normalisation applied to the [0, 1] input.
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  blocks: int = 1
  logit_scale: float = 1.0
  mean: Sequence[float] = cnn.CIFAR10_MEAN
  std: Sequence[float] = cnn.CIFAR10_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: float [batch, H, W, C] in [0, 1] -> logits [batch, num_classes]."""
    del train  # no dropout / batch norm
    batch = x.shape[0]
    h = cnn._normalise(x, self.mean, self.std)  # pylint: disable=protected-access
    h = _orthogonal_conv(self.widths[0], 3, name="stem")(h)
    for stage, width in enumerate(self.widths):
      if stage:
        h = pool_2x2(h)
      for _ in range(self.blocks):
        h = ParsevalBlock(width)(h)
    h = global_pool(nn.relu(h))
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.orthogonal(),
                      name="head")(h)
    chex.assert_shape(logits, (batch, self.num_classes))
    return self.logit_scale * logits
