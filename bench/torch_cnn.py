"""The SmallCNN both sides of the CPU attack benchmarks attack: trained in JAX, copied to PyTorch.

Shared by `bench/attacks.py` (throughput against Foolbox / torchattacks),
`bench/evaluation.py` (AutoAttack and its attacks against torchattacks) and
`bench/pgd_profile.py` (where one PGD step spends its time). torch is imported inside
the functions, so importing this module costs nothing without the `torch` extra.
"""
from __future__ import annotations

import jax
import numpy as np
import optax

from invjax import data as data_lib
from invjax import train
from invjax.nets import cnn


def train_small_cnn(steps: int):
  """A SmallCNN trained `steps` Adam steps on the embedded mini CIFAR-10: (model, variables)."""
  model = cnn.SmallCNN()
  train_ds = data_lib.load("cifar10_mini", "train")
  variables = cnn.init(model, jax.random.PRNGKey(0))
  params, model_state = train.split_variables(variables)
  optimizer = optax.adam(1e-3)
  state = train.TrainState.create(params, optimizer, jax.random.PRNGKey(1), model_state)
  step = train.make_train_step(cnn.make_loss_fn(model), optimizer)
  batches = train.batch_iterator(jax.random.PRNGKey(2), train_ds, 64)
  for _ in range(steps):
    state, _ = step(state, next(batches))
  return model, state.variables


def small_cnn(variables):
  """The same `invjax.nets.cnn.SmallCNN` in PyTorch (NCHW), weights copied from Flax.

  Default widths and layout only: [(conv 3x3 + ReLU) x 2 + 2x2 max-pool] per stage, global
  average pool, dense. Returned in eval mode; weights still require grad (PyTorch's
  default): call `.requires_grad_(False)` for the frozen-weight, input-gradient-only work.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top

  params = variables["params"]
  convs = sorted([k for k in params if k.startswith("Conv_")], key=lambda k: int(k[5:]))
  mean = torch.tensor(cnn.CIFAR10_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(cnn.CIFAR10_STD).view(1, 3, 1, 1)

  class TorchSmallCNN(tnn.Module):
    def __init__(self):
      super().__init__()
      self.register_buffer("mean", mean)  # buffers: `.to(device)` moves them too
      self.register_buffer("std", std)
      self.convs = tnn.ModuleList()
      for k in convs:
        kern = np.asarray(params[k]["kernel"])  # HWIO
        conv = tnn.Conv2d(kern.shape[2], kern.shape[3], 3, padding=1)
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(kern.transpose(3, 2, 0, 1)))
        conv.bias.data = torch.from_numpy(np.asarray(params[k]["bias"]).copy())
        self.convs.append(conv)
      dense = params["Dense_0"]
      self.fc = tnn.Linear(*np.asarray(dense["kernel"]).shape)
      self.fc.weight.data = torch.from_numpy(np.ascontiguousarray(np.asarray(dense["kernel"]).T))
      self.fc.bias.data = torch.from_numpy(np.asarray(dense["bias"]).copy())

    def forward(self, x):
      h = (x - self.mean) / self.std
      for i in range(0, len(self.convs), 2):
        h = torch.relu(self.convs[i](h))
        h = torch.relu(self.convs[i + 1](h))
        h = torch.nn.functional.max_pool2d(h, 2)
      return self.fc(h.mean(dim=(2, 3)))

  return TorchSmallCNN().eval()


def twins(model, variables, x, y, device: str = "cpu"):
  """The jitted JAX `logits_fn`, the frozen PyTorch twin, `x`/`y` as NCHW / int64 tensors, and
  the largest logit difference of the two models on `x` (a check that the copy is exact).
  The torch model and tensors are on `device` ("cpu" or "cuda")."""
  import torch  # pylint: disable=g-import-not-at-top

  logits_fn = jax.jit(cnn.logits_fn(model, variables))
  tmodel = small_cnn(variables).requires_grad_(False).to(device)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
  yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
  with torch.no_grad():
    diff = float(np.abs(tmodel(xt).cpu().numpy() - np.asarray(logits_fn(x))).max())
  return logits_fn, tmodel, xt, yt, diff


def pgd_linf(model, x, y, *, epsilon: float, step_size: float, num_steps: int, seed: int = 0):
  """L_inf PGD with a random start as a plain PyTorch loop (no library): adversarial `x`.

  `x` float NCHW in [0, 1], `y` int64 labels. Every step computes only the input gradient
  (`torch.autograd.grad` with respect to the images), whatever `model`'s weights require.
  """
  import torch  # pylint: disable=g-import-not-at-top

  g = torch.Generator().manual_seed(seed)
  xa = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * epsilon).clamp(0, 1)
  for _ in range(num_steps):
    xa.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xa), y)
    grad, = torch.autograd.grad(loss, xa)
    xa = torch.min(torch.max(xa.detach() + step_size * grad.sign(), x - epsilon), x + epsilon)
    xa = xa.clamp(0, 1)
  return xa.detach()
