"""handgrad's oracle: independent references and a VJP checker for any JAX function.

``reference.<module>.<op>`` is the plain jax.numpy / jax.nn / optax version of
``pure.<module>.<op>``, differentiated by JAX's own autodiff. :func:`check_vjp`
proves a VJP right against float64 central differences and such a reference.
"""

from reference import activations, gates, layers, linear, losses, nn, optim, regularizers, search, train
from reference.check import LeafReport, VJPReport, check_vjp, numerical_grad, numerical_vjp

__all__ = [
    "check_vjp", "numerical_grad", "numerical_vjp", "VJPReport", "LeafReport",
    "gates", "activations", "layers", "losses", "regularizers", "linear", "nn", "optim", "search", "train",
]
