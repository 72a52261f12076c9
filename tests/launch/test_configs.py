"""Every launch config loads, and the full configs (never run in CI) stay in step with the
smoke configs the launch tests do run: the same keys with the same types, and no key that no
launcher or library code reads (a misspelt override would otherwise be silently ignored).

Each experiment is one file with `get_config(arg)`; `arg="smoke"` is its smoke mode. The older
file names are aliases of one variant each."""
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
# Experiment file -> its full-size variants (the args of get_config); each is compared with
# the file's smoke variant (`smoke`, with the same model where the smoke mode has it).
VARIANTS = {
    "flow": {"model=glow": "smoke", "model=realnvp": "smoke", "model=iresnet": "smoke"},
    "classifier": {"model=iresnet": "smoke", "model=irevnet": "smoke", "model=glow": "smoke",
                   "model=certified": "smoke,model=certified",
                   "cpu,model=certified": "smoke,model=certified"},
    "attack": {"model=iresnet": "smoke", "model=irevnet": "smoke", "model=glow": "smoke"},
    "distill": {"": "smoke", "cpu": "smoke", "cpu,jacobian": "smoke"},
    "passeurs": {"": "smoke"},
    "cnn": {"": "smoke", "parseval": "smoke,parseval", "cpu": "smoke",
            "cpu,parseval": "smoke,parseval", "noise": "smoke,noise", "cpu,noise": "smoke,noise"},
    "certify": {"": "smoke"},
    "diagnose": {"": "smoke", "cpu": "smoke"},
    "evaluate": {"model=iresnet": "smoke", "model=irevnet": "smoke", "model=glow": "smoke",
                 "model=iresnet,norm=l2": "smoke,norm=l2"},
}
FULL = sorted((name, arg) for name, args in VARIANTS.items() for arg in args)
# Alias file -> (experiment file, arg).
ALIASES = {
    "flow_smoke": ("flow", "smoke,model=glow"), "flow_cifar10": ("flow", "model=glow"),
    "classifier_smoke": ("classifier", "smoke,model=irevnet"),
    "classifier_cifar10": ("classifier", "model=iresnet"),
    "attack_smoke": ("attack", "smoke"), "attack_cifar10": ("attack", "model=iresnet"),
    "distill_smoke": ("distill", "smoke"), "distill_cifar10": ("distill", ""),
    "distill_cifar10_cpu": ("distill", "cpu"),
    "distill_cifar10_cpu_jacobian": ("distill", "cpu,jacobian"),
    "passeurs_smoke": ("passeurs", "smoke"), "passeurs_cifar10": ("passeurs", ""),
}
# Sub-trees passed on as a model's constructor arguments: their keys depend on the model.
MODEL_SUBTREES = ("model", "kwargs")


def _load(name, arg=None):
  module = importlib.import_module(f"launch.configs.{name}")
  return module.get_config() if arg is None else module.get_config(arg)


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
  assert FULL, "no full configs found"
  for name in VARIANTS:
    assert name in CONFIGS, f"no launch/configs/{name}.py"
    assert isinstance(_load(name, "smoke"), ml_collections.ConfigDict), name


@pytest.mark.parametrize("name,arg", FULL)
def test_full_config_keeps_the_smoke_config_keys(name, arg):
  full, smoke = _leaves(_load(name, arg)), _leaves(_load(name, VARIANTS[name][arg]))
  missing = [".".join(k) for k in smoke if k not in full]
  assert not missing, f"{name}:{arg} lacks keys its smoke config has: {missing}"
  retyped = [(".".join(k), smoke[k], full[k]) for k in smoke if full[k] != smoke[k]]
  assert not retyped, f"{name}:{arg} changes key types: {retyped}"


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_files_are_one_variant(alias):
  name, arg = ALIASES[alias]
  assert _load(alias).to_dict() == _load(name, arg).to_dict()


def test_config_arguments_are_checked():
  with pytest.raises(ValueError, match="unknown config argument"):
    _load("flow", "smok")
  with pytest.raises(ValueError, match="model must be one of"):
    _load("flow", "model=resnet")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_read_somewhere(name):
  sources = _sources()
  for arg in [None] + (list(VARIANTS[name]) + ["smoke"] if name in VARIANTS else []):
    config = _load(name, arg)
    assert isinstance(config, ml_collections.ConfigDict)
    unread = sorted({k[-1] for k in _leaves(config)
                     if not re.search(r"\b" + re.escape(k[-1]) + r"\b", sources)})
    assert not unread, f"{name}:{arg}: no code under launch/ or invjax/ reads {unread}"
