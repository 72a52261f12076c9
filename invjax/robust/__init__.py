"""Robustness quantities and guarantees.

* `lipschitz`: local Lipschitz lower bounds, composed upper bounds, certified radii.
* `certificates`: the certified l2 Lipschitz constant of an invertible classifier from its
  layers' actual operator norms, per-example certified radii, the certified-accuracy curve.
* `independence`: independence cross-entropy (Jacobsen et al. 2019): a nuisance classifier
  trained adversarially so the latent part the head ignores carries no label information.
* `margin_training`: Lipschitz-margin certified training (Tsuzuku et al. 2018; GloRo).
* `parseval`: Parseval networks' orthogonality retraction and simplex projection.
* `smoothing`: randomized smoothing (Cohen et al. 2019), probabilistic l2 certificates.
"""
from invjax.robust import certificates
from invjax.robust import independence
from invjax.robust import margin_training
from invjax.robust import parseval
from invjax.robust import smoothing
from invjax.robust.certificates import (Certification, LipschitzCertificate,
                                        certified_accuracy_curve, certified_lipschitz, certify,
                                        conv_norm_bound, latent_to_image_lower_bound,
                                        plot_certified_curve)
from invjax.robust.independence import (independence_step, init_nuisance_classifier,
                                        nuisance_features)
from invjax.robust.lipschitz import (certified_accuracy, certified_radius, compose_upper,
                                     global_lipschitz_lower, iresnet_upper_bounds, local_lipschitz,
                                     residual_block_bounds, spectral_norm)
from invjax.robust.margin_training import lipschitz_estimate, margin_logits, margin_loss
from invjax.robust.parseval import layer_singular_values, parseval_retraction, project_simplex

__all__ = ["Certification", "LipschitzCertificate", "certificates", "certified_accuracy",
           "certified_accuracy_curve", "certified_lipschitz", "certified_radius", "certify",
           "compose_upper", "conv_norm_bound", "global_lipschitz_lower", "independence",
           "independence_step", "init_nuisance_classifier", "iresnet_upper_bounds",
           "latent_to_image_lower_bound", "layer_singular_values", "lipschitz_estimate",
           "local_lipschitz", "margin_logits", "margin_loss", "margin_training",
           "nuisance_features", "parseval", "parseval_retraction", "plot_certified_curve",
           "project_simplex", "residual_block_bounds", "smoothing", "spectral_norm"]
