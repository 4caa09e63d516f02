"""handgrad's oracle: independent references and checkers for any JAX function's VJP.

``reference.<module>.<op>`` is the plain jax.numpy / jax.nn / optax version of
``pure.<module>.<op>``, differentiated by JAX's own autodiff. :func:`check_vjp` proves a
VJP right against float64 central differences and such a reference; :func:`check_transforms`
proves it the same under jit, vmap, grad-of-jit, jax.checkpoint and scan.
"""

from reference import (
    activations,
    attention,
    embedding,
    gates,
    layers,
    linear,
    losses,
    nn,
    norms,
    optim,
    regularizers,
    search,
    softmax,
    train,
    transformer,
)
from reference.oracle import (
    CheckRefused,
    FnRaised,
    LeafReport,
    Loops,
    Method,
    Mismatch,
    NotDifferentiable,
    TransformMismatch,
    TransformProblem,
    TransformReport,
    VJPMismatch,
    VJPReport,
    check_transforms,
    check_vjp,
    max_abs_diff,
    numerical_grad,
    numerical_vjp,
)

__all__ = [
    "check_vjp", "check_transforms", "numerical_grad", "numerical_vjp", "max_abs_diff",
    "VJPReport", "LeafReport", "Loops", "Method", "Mismatch", "VJPMismatch", "TransformReport", "TransformProblem",
    "TransformMismatch",
    "CheckRefused", "FnRaised", "NotDifferentiable",
    "gates", "activations", "layers", "losses", "regularizers", "linear", "nn", "optim", "search", "train",
    "attention", "embedding", "norms", "softmax", "transformer",
]
