"""Robustness quantities: Lipschitz bounds (local lower, composed upper), certified radii, and
randomized smoothing (`invjax.robust.smoothing`: probabilistic l2 certificates)."""
from invjax.robust import smoothing
from invjax.robust.lipschitz import (certified_accuracy, certified_radius, compose_upper,
                                     global_lipschitz_lower, iresnet_upper_bounds, local_lipschitz,
                                     residual_block_bounds, spectral_norm)

__all__ = ["certified_accuracy", "certified_radius", "compose_upper", "global_lipschitz_lower",
           "iresnet_upper_bounds", "local_lipschitz", "residual_block_bounds", "smoothing",
           "spectral_norm"]
