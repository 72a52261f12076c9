"""Robustness quantities and guarantees.

* `lipschitz`: local Lipschitz lower bounds, composed upper bounds, certified radii.
* `certificates`: the certified l2 Lipschitz constant of an invertible classifier from its
  layers' actual operator norms, per-example certified radii, the certified-accuracy curve.
* `cnn_certificates`: the certified l2 constant of a Parseval CNN from its trained weights.
* `evaluation`: the certification report (Lipschitz and smoothing certificates, attack check).
* `diagnostics`: both reports in one call (`diagnostics_report`: one JSON-able dict and
  markdown, as `launch/diagnose.py` writes them).
* `detection`: likelihood-based detection of adversarial images with hybrid (flow + head)
  models: bits/dim, ROC AUC, the adaptive attack that keeps the likelihood in range
  (`detection_report`).
* `invertibility`: invertibility diagnostics (Behrmann et al. 2021): reconstruction error and
  forward / inverse local Lipschitz bounds on test, adversarial and out-of-distribution inputs,
  numerically non-invertible points flagged (`invertibility_report`).
* `independence`: independence cross-entropy (Jacobsen et al. 2019): a nuisance classifier
  trained adversarially so the latent part the head ignores carries no label information.
* `adversarial_training`: adversarial examples inside the jitted training step, from PGD
  (Madry et al. 2018) or from invjax's latent attack (latent adversarial training).
* `margin_training`: Lipschitz-margin certified training (Tsuzuku et al. 2018; GloRo).
* `parseval`: Parseval networks' orthogonality retraction and simplex projection.
* `smoothing`: randomized smoothing (Cohen et al. 2019), probabilistic l2 certificates.
"""
from invjax.robust import adversarial_training
from invjax.robust import certificates
from invjax.robust import cnn_certificates
from invjax.robust import detection
from invjax.robust import diagnostics
from invjax.robust import evaluation
from invjax.robust import independence
from invjax.robust import invertibility
from invjax.robust import margin_training
from invjax.robust import parseval
from invjax.robust import smoothing
from invjax.robust.adversarial_training import (adversarial_batch, latent_examples,
                                                make_generator)
from invjax.robust.certificates import (Certification, LipschitzCertificate, certifiable,
                                        certified_accuracy_curve, certified_lipschitz, certify,
                                        conv_norm_bound, latent_to_image_lower_bound,
                                        plot_certified_curve)
from invjax.robust.cnn_certificates import CNNLipschitzCertificate, parseval_cnn_lipschitz
from invjax.robust.detection import (DetectionReport, DetectionRow, adaptive_attack,
                                     bits_per_dim, detection_report, roc_auc)
from invjax.robust.diagnostics import diagnostics_report
from invjax.robust.evaluation import certification_report
from invjax.robust.independence import (independence_step, init_nuisance_classifier,
                                        nuisance_features)
from invjax.robust.invertibility import (InvertibilityReport, SetDiagnostics,
                                         invertibility_report, load_ood_images, pgd_examples)
from invjax.robust.lipschitz import (certified_accuracy, certified_radius, compose_upper,
                                     global_lipschitz_lower, iresnet_upper_bounds, local_lipschitz,
                                     residual_block_bounds, spectral_norm)
from invjax.robust.margin_training import lipschitz_estimate, margin_logits, margin_loss
from invjax.robust.parseval import layer_singular_values, parseval_retraction, project_simplex

__all__ = ["CNNLipschitzCertificate", "Certification", "DetectionReport", "DetectionRow",
           "InvertibilityReport", "LipschitzCertificate", "SetDiagnostics", "adaptive_attack",
           "adversarial_batch", "adversarial_training", "latent_examples", "make_generator",
           "bits_per_dim", "certifiable", "certificates", "certification_report",
           "certified_accuracy", "certified_accuracy_curve", "certified_lipschitz",
           "certified_radius", "certify", "cnn_certificates", "compose_upper", "conv_norm_bound",
           "detection", "detection_report", "diagnostics", "diagnostics_report", "evaluation",
           "global_lipschitz_lower", "independence", "independence_step",
           "init_nuisance_classifier", "invertibility", "invertibility_report",
           "iresnet_upper_bounds", "latent_to_image_lower_bound", "layer_singular_values",
           "lipschitz_estimate", "load_ood_images", "local_lipschitz", "margin_logits",
           "margin_loss", "margin_training", "nuisance_features", "parseval",
           "parseval_cnn_lipschitz", "parseval_retraction", "pgd_examples",
           "plot_certified_curve", "project_simplex", "residual_block_bounds", "roc_auc",
           "smoothing", "spectral_norm"]
