"""Flows by name: `build("glow", image_shape, **kwargs)` for launch scripts, configs and benchmarks.

A config names a model as `config.model = {"name": "iresnet", "stages": (1, 1), ...}`;
`from_config(config.model, image_shape)` builds it. Every builder takes the image shape
`(H, W, C)`; the flows whose layers infer it (i-ResNet, certified i-ResNet, i-RevNet) ignore it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn

from invjax._src.checks import InvjaxError
from invjax.flows import iresnet
from invjax.flows import lipschitz_resnet
from invjax.flows.glow import Glow, RealNVP
from invjax.flows.irevnet import IRevNet

Builder = Callable[..., nn.Module]


def _glow(image_shape, **kwargs) -> nn.Module:
  return Glow(image_shape=tuple(image_shape), **kwargs)


def _realnvp(image_shape, **kwargs) -> nn.Module:
  return RealNVP(image_shape=tuple(image_shape), **kwargs)


def _iresnet(image_shape, **kwargs) -> nn.Module:
  del image_shape
  return iresnet.from_config(kwargs)


def _lipschitz_resnet(image_shape, **kwargs) -> nn.Module:
  del image_shape
  return lipschitz_resnet.from_config(kwargs)


def _irevnet(image_shape, **kwargs) -> nn.Module:
  del image_shape
  return IRevNet(**kwargs)


# name -> builder(image_shape (H, W, C), **constructor kwargs) -> flow module
FLOWS: Dict[str, Builder] = {"glow": _glow, "realnvp": _realnvp, "iresnet": _iresnet,
                             "irevnet": _irevnet, "lipschitz_resnet": _lipschitz_resnet}


def names() -> Sequence[str]:
  """The registered flow names, sorted."""
  return sorted(FLOWS)


def build(name: str, image_shape: Optional[Sequence[int]] = None, **kwargs: Any) -> nn.Module:
  """The flow `name` with constructor `kwargs` (lists become tuples, as configs store them)."""
  if name not in FLOWS:
    raise InvjaxError(f"unknown flow {name!r}, expected one of {names()}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return FLOWS[name](image_shape, **kwargs)


def from_config(model_config: Any, image_shape: Optional[Sequence[int]] = None) -> nn.Module:
  """`build(model_config.name, image_shape, **rest of model_config)` (a dict or ConfigDict)."""
  kwargs = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  if "name" not in kwargs:
    raise InvjaxError(f"a model config needs a 'name' (one of {names()}), got {sorted(kwargs)}")
  name = kwargs.pop("name")
  return build(name, image_shape, **kwargs)
