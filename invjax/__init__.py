"""invjax: invertible networks, inversion attacks, Lipschitz robustness and passeurs poisoning in JAX.

Sub-packages: `invjax.data`, `invjax.flows`, `invjax.nets`, `invjax.attacks`, `invjax.robust`,
`invjax.passeurs`; modules `invjax.train`, `invjax.parallel`, `invjax.distill`.
"""
__version__ = "0.1.0"
