"""The certified l2 Lipschitz constant of a Parseval CNN (`invjax.nets.parseval_cnn`).

`ParsevalCNN` maps an image x in [0, 1] to logits through

    normalise -> stem conv -> [pool_2x2] -> blocks ... -> relu -> global_pool -> head -> scale

and each piece has a provable l2 Lipschitz bound, computed here from the *trained* weights
(not from the Parseval constraint, which the retraction only approximates):

* normalisation `(x - mean) / std`: `1 / min(std)` (a diagonal map);
* a convolution: `certificates.conv_norm_bound` (the largest singular value of the kernel's
  DFT on the zero-padded torus; bounds the zero-padded convolution, any padding) times a
  float rounding margin; biases do not change a Lipschitz constant;
* a block `a_0 shortcut(x) + a_1 conv(relu(conv(relu(x))))`: at most
  `|a_0| Lip(shortcut) + |a_1| Lip(conv_1) Lip(conv_0)` (triangle inequality; ReLU is
  1-Lipschitz). With `a` on the simplex and Parseval layers this is 1, the paper's claim;
  the actual `a` is used, so the bound holds for any trained `a`;
* `pool_2x2`, `global_pool` and ReLU: exactly 1 (their docstrings);
* the head: the float64 spectral norm of its kernel, times `logit_scale`.

The product bounds the constant of `x -> logits`, so a margin certifies the radius
`margin / (sqrt(2) L)` (`invjax.robust.lipschitz.certified_radius`) for the raw network:
a deterministic certificate, as for the certified invertible classifiers.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import numpy as np

from invjax._src import checks
from invjax.robust import certificates

_ROUNDING = 1.0 + 1e-6


class CNNLipschitzCertificate(NamedTuple):
  """Provable l2 bounds of a Parseval CNN's pieces (module docstring).

  Attributes:
    lipschitz: the bound of `x -> logits` (the product of the others).
    normalisation: `1 / min(std)`.
    stem: the stem convolution's bound.
    blocks: each residual block's bound, in order.
    head: the head's spectral norm times `logit_scale`.
    nominal: the bound exact Parseval layers and simplex weights would give,
      `logit_scale / min(std)`.
  """
  lipschitz: float
  normalisation: float
  stem: float
  blocks: Tuple[float, ...]
  head: float
  nominal: float


def _conv(params, input_hw: Sequence[int]) -> float:
  return certificates.conv_norm_bound(np.asarray(params["kernel"]), input_hw) * _ROUNDING


def parseval_cnn_lipschitz(model, variables, image_shape: Sequence[int]
                           ) -> CNNLipschitzCertificate:
  """The certified l2 Lipschitz constant of `x -> model.apply(variables, x)` (a `ParsevalCNN`).

  Args:
    model: an `invjax.nets.ParsevalCNN`.
    variables: its variables (`{"params": ...}`).
    image_shape: `(H, W, C)` of the images it certifies (the convolutions' norms depend on
      the input size).

  Returns:
    `CNNLipschitzCertificate`.
  """
  for name in ("widths", "blocks", "logit_scale", "std"):
    if not hasattr(model, name):
      raise checks.InvjaxError(f"model must be a ParsevalCNN, got {type(model).__name__}")
  if len(image_shape) != 3:
    raise checks.InvjaxError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
  params = variables["params"]
  h, w = int(image_shape[0]), int(image_shape[1])
  normalisation = 1.0 / float(np.min(np.asarray(model.std, np.float64)))
  stem = _conv(params["stem"], (h, w))
  blocks, index = [], 0
  for stage, _ in enumerate(model.widths):
    if stage:
      h, w = h // 2, w // 2
    for _ in range(int(model.blocks)):
      p = params[f"ParsevalBlock_{index}"]
      a = np.abs(np.asarray(p["aggregation"], np.float64))
      shortcut = _conv(p["shortcut"], (h, w)) if "shortcut" in p else 1.0
      branch = _conv(p["Conv_0"], (h, w)) * _conv(p["Conv_1"], (h, w))
      blocks.append(float(a[0] * shortcut + a[1] * branch))
      index += 1
  scale = abs(float(model.logit_scale))
  head = float(np.linalg.norm(np.asarray(params["head"]["kernel"], np.float64), ord=2))
  head *= scale * _ROUNDING
  total = normalisation * stem * float(np.prod(blocks)) * head
  return CNNLipschitzCertificate(lipschitz=total, normalisation=normalisation, stem=stem,
                                 blocks=tuple(blocks), head=head,
                                 nominal=scale * normalisation)
