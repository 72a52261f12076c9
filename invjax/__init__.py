"""invjax: invertible networks, inversion attacks, Lipschitz robustness and passeurs poisoning in JAX.

Sub-packages: `invjax.data`, `invjax.flows`, `invjax.nets`, `invjax.attacks`, `invjax.robust`,
`invjax.passeurs`, `invjax.information`; modules `invjax.train`, `invjax.parallel`,
`invjax.distill`. Internals (compilation, the convolution primitive, loops, file writes,
checks) live in `invjax._src`.
"""
from invjax._src.checks import ConvergenceError, ConvergenceWarning, InvjaxError

__version__ = "0.1.0"
__all__ = ["ConvergenceError", "ConvergenceWarning", "InvjaxError", "__version__"]
