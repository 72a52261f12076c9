"""Attacks: `attack(logits_fn, x, y, *, key, **budget) -> AttackResult`.

Modules:
  gradient: FGSM / FGM and PGD in pixel space (any `logits_fn`); `ATTACKS` by name.
  cw: Carlini-Wagner L2 (any `logits_fn`).
  inputs: the input checks of the pixel-space attacks.
  latent: inversion attacks on invertible classifiers (closed form, Jacobian-aware,
    optimised); latent_steps: their compiled steps and line search; latent_geometry:
    the head's half-spaces and minimal-norm steps across them.
  invariance: metameric attacks (Jacobsen et al. 2019).
  functional: invertible classifiers as pure `(params, value)` functions.
  result: `AttackResult`, distances, success re-checked on the model.
  suite: named attacks over a list of epsilons on an invertible classifier (launch/attack.py);
    report: its tables and figures.
"""
from invjax.attacks.apgd import apgd, apgd_targeted
from invjax.attacks.cw import carlini_wagner_l2
from invjax.attacks.fab_attack import fab
from invjax.attacks.gradient import fgsm, pgd
from invjax.attacks.invariance import (MetamericResult, label_agreement, metameric_attack,
                                       metameric_attack_from_model)
from invjax.attacks.latent import LatentInfo, latent_attack, latent_attack_from_model
from invjax.attacks.result import AttackResult, distances, from_adversarial
from invjax.attacks.square_attack import square

__all__ = (
    "AttackResult",
    "LatentInfo",
    "MetamericResult",
    "apgd", "apgd_targeted",
    "carlini_wagner_l2",
    "distances",
    "fab",
    "fgsm",
    "from_adversarial",
    "label_agreement",
    "latent_attack",
    "latent_attack_from_model",
    "metameric_attack",
    "metameric_attack_from_model",
    "pgd",
    "square",
)
