"""Every launch config loads, and the full configs (never run in CI) stay in step with the
smoke configs the launch tests do run: the same keys with the same types, and no key that no
launcher or library code reads (a misspelt override would otherwise be silently ignored)."""
import glob
import importlib
import os
import re

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "launch", "configs")
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                 if not p.endswith("__init__.py"))
# Full config -> the smoke config that tests/launch runs end to end.
SMOKE_OF = {name: name.split("_")[0] + "_smoke" for name in CONFIGS if "smoke" not in name}
# Sub-trees passed on as a model's constructor arguments: their keys depend on the model.
MODEL_SUBTREES = ("model", "kwargs")


def _load(name):
  return importlib.import_module(f"launch.configs.{name}").get_config()


def _leaves(config, prefix=()):
  """{key path: type name} of the leaves outside model sub-trees."""
  out = {}
  for key, value in config.items():
    if key in MODEL_SUBTREES:
      continue
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_leaves(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = type(value).__name__
  return out


def _sources():
  paths = glob.glob(os.path.join(ROOT, "launch", "*.py"))
  paths += glob.glob(os.path.join(ROOT, "invjax", "**", "*.py"), recursive=True)
  return "\n".join(open(p).read() for p in paths)


def test_every_full_config_has_a_smoke_sibling():
  assert SMOKE_OF, "no full configs found"
  for name, smoke in SMOKE_OF.items():
    assert smoke in CONFIGS, f"{name} has no smoke config {smoke}"


@pytest.mark.parametrize("name", sorted(SMOKE_OF))
def test_full_config_keeps_the_smoke_config_keys(name):
  full, smoke = _leaves(_load(name)), _leaves(_load(SMOKE_OF[name]))
  missing = [".".join(k) for k in smoke if k not in full]
  assert not missing, f"{name} lacks keys its smoke config has: {missing}"
  retyped = [(".".join(k), smoke[k], full[k]) for k in smoke if full[k] != smoke[k]]
  assert not retyped, f"{name} changes key types: {retyped}"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_read_somewhere(name):
  config = _load(name)
  assert isinstance(config, ml_collections.ConfigDict)
  sources = _sources()
  unread = sorted({k[-1] for k in _leaves(config)
                   if not re.search(r"\b" + re.escape(k[-1]) + r"\b", sources)})
  assert not unread, f"{name}: no code under launch/ or invjax/ reads {unread}"
