"""Passeurs: a linear SVM in JAX (LIBLINEAR's defaults), test-set-inflating poisoning, the audit.

Modules: `svm` (fit / decision_function / predict / objectives), `poison` (sign-gradient and
rotation steps), `pipeline` (frozen-CNN features -> SVM -> public/private accuracy), `audit`.
"""
from invjax.passeurs.svm import SVMInfo, SVMParams, decision_function, fit, predict
