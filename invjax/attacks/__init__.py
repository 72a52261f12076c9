"""Attacks: `attack(logits_fn, x, y, *, key, **budget) -> AttackResult`.

gradient: FGSM, PGD, Carlini-Wagner L2 (any `logits_fn`); latent: inversion attacks on invertible
classifiers; invariance: metameric attacks (Jacobsen et al. 2019).
"""
from invjax.attacks.gradient import carlini_wagner_l2, fgsm, pgd
from invjax.attacks.invariance import (MetamericResult, label_agreement, metameric_attack,
                                       metameric_attack_from_model)
from invjax.attacks.latent import LatentInfo, latent_attack, latent_attack_from_model
from invjax.attacks.result import AttackResult, distances, from_adversarial
