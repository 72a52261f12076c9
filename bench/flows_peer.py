"""The peer column of `bench/flows.py`: the smoke Glow and i-ResNet in normflows (PyTorch).

normflows (Stimper et al. 2023, `pip install --no-deps normflows`; not a dependency of invjax)
provides the Glow step (`GlowBlock`: affine coupling with a 3x3-1x1-3x3 ReLU conv net whose
last layer starts at zero, LU 1x1 convolution, data-initialised ActNorm), the multi-scale
wrapper with squeezes and splits (`MultiscaleFlow`), and the residual-flows i-ResNet block
(`Residual`: Hutchinson power series with a fixed number of terms, or the Russian-roulette
estimator, Neumann-series gradient, spectral-normalised convolutions `InducedNormConv2d` with
power iterations at every training call, LipSwish). The models here mirror the invjax smoke
models of the throughput table:

* Glow: 2 levels x 4 steps, hidden 32, on 32x32x3 (latents 6x16x16 and 24x8x8), fixed
  standard-normal prior;
* i-ResNet: 2 stages x 2 blocks with a squeeze between them, g = conv3x3 - LipSwish -
  conv1x1 - LipSwish - conv3x3 (hidden 32, coefficient 0.9, 5 power iterations per call),
  log-det by the 5-term power series with one Gaussian probe, or by the Russian roulette
  (Poisson, lambda 2, 2 exact terms), standard-normal prior on the 12x16x16 output.

`timed_train` times Adam steps on the same bits/dim loss as the invjax rows (dequantised
pixels `(x + u) / 256 - 0.5`), eagerly as normflows' users run it.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np


def unavailable(device: str = "cpu") -> Optional[str]:
  """None when normflows and torch import (and `device` exists), else the reason."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  for name in ("torch", "normflows"):
    if importlib.util.find_spec(name) is None:
      return f"not installed ({name})"
  import torch  # pylint: disable=g-import-not-at-top
  if device == "cuda" and not torch.cuda.is_available():
    return "torch sees no CUDA device"
  return None


def glow(num_levels: int = 2, num_steps: int = 4, hidden: int = 32, image_shape=(3, 32, 32)):
  """normflows' multi-scale Glow, `num_levels` x `num_steps` GlowBlocks (NCHW)."""
  import normflows as nf  # pylint: disable=g-import-not-at-top
  c, h, w = image_shape
  levels, q0, merges = [], [], []
  for i in range(num_levels):  # i = 0 is the deepest level (normflows' order)
    depth = num_levels - i
    channels = c * 2 ** (num_levels + 1 - i)  # 24 at 8x8, 12 at 16x16 for 2 levels
    levels.append([nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True)
                   for _ in range(num_steps)] + [nf.flows.Squeeze()])
    if i > 0:
      merges.append(nf.flows.Merge())
      shape = (c * 2 ** depth, h // 2 ** depth, w // 2 ** depth)
    else:
      shape = (c * 2 ** (num_levels + 1), h // 2 ** num_levels, w // 2 ** num_levels)
    q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
  return nf.MultiscaleFlow(q0, levels, merges, class_cond=False)


class _LipschitzNet:
  """Factory of g = conv - LipSwish - conv - LipSwish - conv with spectral-normalised convs."""

  @staticmethod
  def make(channels: int, hidden: int, kernel_sizes: Sequence[int], coeff: float,
           n_power_iterations: int):
    import torch  # pylint: disable=g-import-not-at-top
    from normflows.nets import lipschitz  # pylint: disable=g-import-not-at-top
    widths = [channels] + [hidden] * (len(kernel_sizes) - 1) + [channels]
    layers = []
    for i, k in enumerate(kernel_sizes):
      if i:
        layers.append(lipschitz.Swish())
      layers.append(lipschitz.InducedNormConv2d(
          widths[i], widths[i + 1], k, stride=1, padding=k // 2, bias=True, coeff=coeff,
          domain=2, codomain=2, n_iterations=n_power_iterations, atol=None, rtol=None))
    return torch.nn.Sequential(*layers)


def iresnet(stages=(2, 2), hidden: int = 32, coeff: float = 0.9,
            logdet: str = "power_series", n_terms: int = 5, n_power_iterations: int = 5,
            image_shape=(3, 32, 32), kernel_sizes=(3, 1, 3)):
  """normflows' residual-flow blocks as the invjax smoke i-ResNet (NCHW)."""
  import normflows as nf  # pylint: disable=g-import-not-at-top
  if logdet not in ("power_series", "russian_roulette"):
    raise ValueError(f"logdet must be power_series or russian_roulette, got {logdet!r}")
  c, h, w = image_shape
  estimator = (dict(n_power_series=n_terms) if logdet == "power_series"
               else dict(n_power_series=None, n_dist="poisson", lamb=2.0, n_exact_terms=2))
  density_order = []  # x -> z
  for s, n_blocks in enumerate(stages):
    if s:
      density_order.append(nf.flows.Squeeze())
    ch = c * 4 ** s
    density_order += [nf.flows.Residual(
        _LipschitzNet.make(ch, hidden, kernel_sizes, coeff, n_power_iterations),
        reduce_memory=True, n_samples=1, **estimator) for _ in range(n_blocks)]
  depth = len(stages) - 1
  q0 = nf.distributions.DiagGaussian((c * 4 ** depth, h // 2 ** depth, w // 2 ** depth),
                                     trainable=False)
  # normflows lists flows from the latent to the data: its log_prob runs them reversed.
  return nf.NormalizingFlow(q0, density_order[::-1])


def num_params(model) -> int:
  """Trainable weights, without residual-flows' estimator scalars (`geom_p`, `lamb`: they only
  parametrise the sampling of the series length and get no gradient)."""
  return sum(p.numel() for name, p in model.named_parameters()
             if p.requires_grad and not name.endswith(("geom_p", "lamb")))


def _log_prob(model, x):
  import normflows as nf  # pylint: disable=g-import-not-at-top
  return model.log_prob(x, None) if isinstance(model, nf.MultiscaleFlow) else model.log_prob(x)


def timed_train(name, model, x_uint8: np.ndarray, batch_size: int, steps: int,
                device: str = "cpu", seed: int = 0):
  """(name, params, images/s, ms/step, first step s, bits/dim first, last) of eager Adam
  steps on the dequantised bits/dim, the first two steps (ActNorm init, warm-up) untimed."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = model.to(device)
  dims = int(np.prod(x_uint8.shape[1:]))
  n = x_uint8.shape[0]
  nchw = torch.from_numpy(np.ascontiguousarray(x_uint8.transpose(0, 3, 1, 2)))
  optimizer = None
  losses, t_first, t0 = [], 0.0, 0.0
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  for i in range(steps + 2):
    if i == 2:
      sync()
      t0 = time.perf_counter()
    lo = (i * batch_size) % (n - batch_size + 1)
    xb = nchw[lo:lo + batch_size].to(device).float()
    x = (xb + torch.rand_like(xb)) / 256.0 - 0.5
    t_step = time.perf_counter()
    log_px = _log_prob(model, x)
    loss = torch.mean(-(log_px - dims * np.log(256.0)) / (dims * np.log(2.0)))
    if optimizer is None:  # after the data-dependent ActNorm init created the parameters
      optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
    if i == 0:
      t_first = time.perf_counter() - t_step
  sync()
  dt = time.perf_counter() - t0
  return (name, num_params(model), steps * batch_size / dt, 1000 * dt / steps, t_first, losses[0],
          losses[-1])
