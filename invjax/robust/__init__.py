"""Robustness quantities: Lipschitz bounds (local lower, composed upper), certified radii,
Parseval networks (`invjax.robust.parseval`: the orthogonality retraction) and randomized
smoothing (`invjax.robust.smoothing`: probabilistic l2 certificates)."""
from invjax.robust import parseval
from invjax.robust import smoothing
from invjax.robust.lipschitz import (certified_accuracy, certified_radius, compose_upper,
                                     global_lipschitz_lower, iresnet_upper_bounds, local_lipschitz,
                                     residual_block_bounds, spectral_norm)
from invjax.robust.parseval import layer_singular_values, parseval_retraction, project_simplex

__all__ = ["certified_accuracy", "certified_radius", "compose_upper", "global_lipschitz_lower",
           "iresnet_upper_bounds", "layer_singular_values", "local_lipschitz", "parseval",
           "parseval_retraction", "project_simplex", "residual_block_bounds", "smoothing",
           "spectral_norm"]
