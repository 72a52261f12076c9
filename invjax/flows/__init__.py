"""Invertible layers and models.

Every layer and model follows one contract (see `chain.py`):
  y, log_det = model.apply(variables, x)                       # log|det dy/dx|, shape [batch]
  x, log_det_inv = model.apply(variables, y, method="inverse")
Estimated log-dets (i-ResNet power series / Russian roulette) take `rngs={"logdet": key}`.
"""
from invjax.flows.activations import ELU, LipSwish
from invjax.flows.actnorm import ActNorm
from invjax.flows.chain import Chain
from invjax.flows.classifier import (InvertibleClassifier, cross_entropy, hybrid_loss,
                                     make_classifier, nll_bits_per_dim)
from invjax.flows.conv1x1 import Conv1x1
from invjax.flows.coupling import AdditiveCoupling, AffineCoupling
from invjax.flows.distrax_adapter import FlowBijector, to_distrax
from invjax.flows.fixed_point import (ConvergenceWarning, FixedPointInfo, check_converged,
                                      fixed_point, fixed_point_implicit)
from invjax.flows.glow import Glow, RealNVP
from invjax.flows.iresnet import BlockSettings, IResNet, IResNetBlock
from invjax.flows.irevnet import IRevNet, IRevNetBlock
from invjax.flows.lipschitz_resnet import BranchLayer, LipschitzBlock, LipschitzResNet
from invjax.flows.logdet import exact_logdet, power_series_logdet, russian_roulette_logdet
from invjax.flows.registry import FLOWS, build, from_config
from invjax.flows.multiscale import (MultiScale, bits_per_dim, standard_normal_logpdf,
                                     uniform_dequantize)
from invjax.flows.spectral_norm import SpectralConv, SpectralDense, converge_spectral_norms
from invjax.flows.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BlockSettings",
    "BranchLayer",
    "Chain",
    "Conv1x1",
    "ConvergenceWarning",
    "ELU",
    "FLOWS",
    "FixedPointInfo",
    "FlowBijector",
    "Glow",
    "IResNet",
    "IResNetBlock",
    "IRevNet",
    "IRevNetBlock",
    "InvertibleClassifier",
    "LipSwish",
    "LipschitzBlock",
    "LipschitzResNet",
    "MultiScale",
    "RealNVP",
    "SpectralConv",
    "SpectralDense",
    "Squeeze",
    "bits_per_dim",
    "build",
    "check_converged",
    "converge_spectral_norms",
    "cross_entropy",
    "exact_logdet",
    "fixed_point",
    "fixed_point_implicit",
    "from_config",
    "hybrid_loss",
    "make_classifier",
    "nll_bits_per_dim",
    "power_series_logdet",
    "russian_roulette_logdet",
    "standard_normal_logpdf",
    "to_distrax",
    "uniform_dequantize",
]
