"""Passeurs: a linear SVM in JAX (LIBLINEAR's defaults), test-set-inflating poisoning, the audit.

Modules:
  `svm`: fit / decision_function / predict / objectives, the LIBLINEAR backend (`fit_liblinear`,
    `make_fit`); its solvers `svm_newton` (primal Newton-PCG) and `svm_dual_cd` (dual coordinate
    descent), their common result type in `svm_solvers`.
  `poison`: sign-gradient (optionally with momentum) and rotation steps on uint8 images.
  `features`: frozen feature extractors (EfficientNet-Lite0, random convolutions), `embed`, the
    feature cache.
  `experiment`: the public/private split, the step loop (`run_experiment`), its audit and the
    launch job (`run_and_write`).
  `report`: the results table, plots and written files.
  `audit`: the buyer's statistics revealing a training set tuned to the public test half.
  `sharding`: the same work over several processes (`jax.distributed`): each process its
    batches of the images, the results gathered, process 0's SVMs broadcast.
"""
from invjax.passeurs import sharding
from invjax.passeurs.svm import SVMInfo, SVMParams, decision_function, fit, predict

__all__ = ["SVMInfo", "SVMParams", "decision_function", "fit", "predict", "sharding"]
