"""handgrad's pure functions: JAX ops whose backward passes are written by hand.

Every op is a ``jax.custom_vjp`` whose forward and backward sit side by side in one
topic module. They work under ``jit``, ``vmap`` and ``grad`` (grad-of-grad too).
Forward mode (``jax.jvp``, ``jax.jacfwd``) is rejected by JAX for any custom_vjp,
with ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function.``
Use ``jax.jacrev`` instead.
"""

from pure import linear, nn, optim, search, train, transformer  # noqa: E402  (topic modules built on the ops above)
from pure.activations import gelu, leaky_relu, relu, sigmoid, tanh
from pure.attention import attention
from pure.embedding import embedding
from pure.gates import add, maximum, mul
from pure.layers import affine, dropout
from pure.losses import binary_cross_entropy, mse, multiclass_hinge, softmax_cross_entropy
from pure.norms import layer_norm, rms_norm
from pure.regularizers import l1_penalty, l2_penalty, max_norm
from pure.softmax import log_softmax, softmax

__all__ = [
    "add", "mul", "maximum",
    "sigmoid", "tanh", "relu", "leaky_relu", "gelu",
    "affine", "dropout",
    "mse", "softmax_cross_entropy", "multiclass_hinge", "binary_cross_entropy",
    "l2_penalty", "l1_penalty", "max_norm",
    "softmax", "log_softmax", "layer_norm", "rms_norm", "embedding", "attention",
    "linear", "nn", "optim", "search", "train", "transformer",
]
