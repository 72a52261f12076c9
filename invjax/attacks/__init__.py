"""Attacks: `attack(logits_fn, x, y, *, key, **budget) -> AttackResult`.

Modules:
  gradient: FGSM / FGM and PGD in pixel space (any `logits_fn`); `ATTACKS` by name.
  cw: Carlini-Wagner L2 (any `logits_fn`).
  autopgd: APGD (CE / DLR, L_inf / L2, targeted) and APGD-T (Croce & Hein 2020);
    apgd_losses: the cross-entropy and DLR losses they maximise.
  fab_attack: FAB / FAB-T, minimal-norm (Croce & Hein 2020).
  square_attack: the Square attack, score-based random search (Andriushchenko et al. 2020).
  ensemble: `autoattack`, the AutoAttack protocol (APGD-CE, APGD-T, FAB-T, Square on the
    points still robust, per-example worst case, sanity flags); ensemble_report: its
    report, markdown table and RobustBench-style JSON.
  eot: expectation over transformations for randomised models.
  masking: gradient masking on invertible networks (implicit / unrolled / BPDA gradients of a
    fixed-point inverse against Square).
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
from invjax.attacks.autopgd import apgd, apgd_targeted
from invjax.attacks.cw import carlini_wagner_l2
from invjax.attacks.ensemble import AutoAttackReport, AutoAttackWarning, autoattack
from invjax.attacks.eot import eot_attack, expectation_logits
from invjax.attacks.fab_attack import fab
from invjax.attacks.gradient import fgsm, pgd
from invjax.attacks.invariance import (MetamericResult, label_agreement, metameric_attack,
                                       metameric_attack_from_model)
from invjax.attacks.latent import LatentInfo, latent_attack, latent_attack_from_model
from invjax.attacks.masking import GradientMaskingWarning, MaskingReport, masking_report
from invjax.attacks.result import AttackResult, distances, from_adversarial
from invjax.attacks.square_attack import square

__all__ = (
    "AttackResult",
    "AutoAttackReport",
    "AutoAttackWarning",
    "GradientMaskingWarning",
    "LatentInfo",
    "MaskingReport",
    "MetamericResult",
    "apgd",
    "apgd_targeted",
    "autoattack",
    "carlini_wagner_l2",
    "distances",
    "eot_attack",
    "expectation_logits",
    "fab",
    "fgsm",
    "from_adversarial",
    "label_agreement",
    "latent_attack",
    "latent_attack_from_model",
    "masking_report",
    "metameric_attack",
    "metameric_attack_from_model",
    "pgd",
    "square",
)
