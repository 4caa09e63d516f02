"""The multilayer perceptron with explicit parameter pytrees.

``params`` is a list of ``{"W": (d_in, d_out), "b": (d_out,)}`` dicts. The forward uses
only :func:`pure.layers.affine`, the pure activations and :func:`pure.layers.dropout`,
so its gradient is hand-written backprop from end to end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from pure.activations import leaky_relu, relu, sigmoid, tanh
from pure.layers import affine, dropout
from pure.losses import multiclass_hinge, softmax_cross_entropy
from pure.regularizers import l2_penalty

Params = list[dict[str, jax.Array]]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "leaky_relu": leaky_relu,
}
LOSSES: dict[str, Callable[..., jax.Array]] = {"softmax": softmax_cross_entropy, "hinge": multiclass_hinge}
INIT_SCHEMES = ("he", "xavier", "normal")


def weights_only(params: Params) -> list[dict[str, bool]]:
    """The usual penalty mask: every ``W`` and no bias (biases are usually not regularised)."""
    return [{"W": True, "b": False} for _ in params]


def init_mlp(key: jax.Array, sizes: Sequence[int], *, scheme: str = "he", std: float = 0.01,
             dtype: Any = jnp.float32) -> Params:
    """Random weights and zero biases for an MLP with layer widths ``sizes``.

    Schemes, for a layer with ``fan_in`` inputs and ``fan_out`` outputs:

    * ``"normal"``: N(0, std²), the notes' N(0, 0.01) (fine for small nets, not deep ones);
    * ``"xavier"``: N(0, 2/(fan_in + fan_out)) (Glorot), for sigmoid and tanh;
    * ``"he"``: N(0, 2/fan_in), for relu.

    Args:
      key: a PRNG key.
      sizes: ``[d_in, h_1, ..., d_out]``, at least two positive ints.
      scheme: "he", "xavier" or "normal".
      std: the standard deviation of the "normal" scheme.
      dtype: the parameter dtype.

    Returns:
      A list of ``{"W": (d_in, d_out), "b": (d_out,)}`` dicts.

    Example:
      >>> [p["W"].shape for p in init_mlp(jax.random.key(0), [4, 10, 3])]
      [(4, 10), (10, 3)]
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise ValueError(f"init_mlp: sizes must be at least two positive ints, got {sizes}")
    stds = {
        "normal": lambda fan_in, fan_out: std,
        "xavier": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
        "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
    }
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init_mlp: scheme must be one of {sorted(INIT_SCHEMES)}, got {scheme!r}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"W": stds[scheme](m, n) * jax.random.normal(k, (m, n), dtype), "b": jnp.zeros(n, dtype)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def count_params(params: Params) -> int:
    """The parameter count of a dense net: per layer, #neurons × #inputs + #biases.

    Example:
      >>> count_params(init_mlp(jax.random.key(0), [4, 10, 3]))  # 10·4 + 10 + 3·10 + 3
      83
    """
    return sum(layer["W"].shape[0] * layer["W"].shape[1] + layer["b"].shape[0] for layer in params)


def mlp(params: Params, x: Float[ArrayLike, "*batch d_in"], *, activation: str = "relu", dropout_rate: float = 0.0,
        key: jax.Array | None = None, deterministic: bool = True,
        compute_dtype: Any = None) -> Float[Array, "*batch d_out"]:
    """Logits of the MLP: ``affine → activation → dropout`` per hidden layer, then ``affine``.

    **Mixed precision.** With ``compute_dtype`` (e.g. ``jnp.bfloat16``) the inputs and each
    layer's ``W`` and ``b`` are cast to it on the way in, so every matmul and activation, and
    their hand-written backwards, run in it, while the parameters (and so their gradients,
    through the cast's transpose) stay in their own dtype, usually float32. The logits come
    out in ``compute_dtype``; the pure losses compute in at least float32. That is the policy
    "params float32, compute bfloat16 (or float16), loss and softmax float32".

    Args:
      params: from :func:`init_mlp`.
      x: inputs of shape ``(..., d_in)``.
      activation: "relu", "sigmoid", "tanh" or "leaky_relu".
      dropout_rate: the probability of dropping a hidden unit (never an input or a logit).
      key: a PRNG key, required when dropout is live (``dropout_rate > 0`` and not
        ``deterministic``); split once per hidden layer.
      deterministic: True (the default) turns dropout off, as at inference.
      compute_dtype: the dtype of the forward and backward computation; None computes in
        the parameters' own dtype.

    Returns:
      Logits of shape ``(..., d_out)``, in ``compute_dtype`` if given.

    Example:
      >>> params = init_mlp(jax.random.key(0), [4, 10, 3])
      >>> mlp(params, jnp.ones((5, 4))).shape
      (5, 3)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    live = dropout_rate > 0 and not deterministic
    if live and key is None:
        raise ValueError("mlp: a key is required when dropout is live (dropout_rate > 0 and "
                         "deterministic=False); pass key=jax.random.key(...) or deterministic=True")
    act = ACTIVATIONS[activation]
    keys = jax.random.split(key, len(params)) if live and key is not None else [None] * len(params)
    if compute_dtype is not None:
        x, params = jnp.asarray(x).astype(compute_dtype), jax.tree_util.tree_map(lambda a: a.astype(compute_dtype),
                                                                                  params)
    h = x
    for layer, k in zip(params[:-1], keys, strict=False):
        h = act(affine(h, layer["W"], layer["b"]))
        if live:
            h = dropout(h, k, dropout_rate)
    return affine(h, params[-1]["W"], params[-1]["b"])


def classification_loss(params: Params, x: Float[ArrayLike, "n d_in"], labels: Int[ArrayLike, " n"], *, l2: float = 0.0,
                        loss: str = "softmax", activation: str = "relu", dropout_rate: float = 0.0,
                        key: jax.Array | None = None, deterministic: bool = True,
                        compute_dtype: Any = None) -> jax.Array:
    """Mean classification loss of the MLP plus ``l2/2 · Σ W²`` over the weights (not biases).

    Args:
      params: from :func:`init_mlp`.
      x: inputs ``(N, d_in)``.
      labels: integer classes ``(N,)``.
      l2: λ of the d2l penalty ``λ/2‖W‖²`` (use ``2·reg`` for CS231n's ``reg·ΣW²``).
      loss: "softmax" (cross-entropy) or "hinge" (CS231n multiclass SVM).
      activation, dropout_rate, key, deterministic, compute_dtype: as in :func:`mlp`; the loss
        and the penalty are computed in at least float32 whatever ``compute_dtype`` is.

    Returns:
      A scalar.
    """
    if loss not in LOSSES:
        raise ValueError(f"classification_loss: loss must be one of {sorted(LOSSES)}, got {loss!r}")
    logits = mlp(params, x, activation=activation, dropout_rate=dropout_rate, key=key, deterministic=deterministic,
                 compute_dtype=compute_dtype)
    data = LOSSES[loss](logits, labels)
    return data + l2_penalty(params, l2, mask=weights_only) if l2 else data


def two_layer_net_loss(params: Params, x: Float[ArrayLike, "n d"], labels: Int[ArrayLike, " n"], *,
                       reg: float = 0.0) -> Float[Array, ""]:
    """CS231n's two-layer net: ``affine → relu → affine → softmax`` plus ``reg · Σ W²``.

    .. math::
       L = \\frac1N\\sum_i -\\log \\mathrm{softmax}(s_i)_{y_i}
           + \\mathrm{reg}\\,(\\lVert W_1\\rVert^2 + \\lVert W_2\\rVert^2)

    The penalty is CS231n's convention (gradient ``2·reg·W``), i.e. ``l2_penalty`` with
    strength ``2·reg``; biases are not penalised.

    Args:
      params: two layers from :func:`init_mlp`, e.g. sizes ``[D, H, C]``.
      x: inputs ``(N, D)``.
      labels: integer classes ``(N,)``.
      reg: the CS231n regularisation strength.

    Returns:
      A scalar.
    """
    if len(params) != 2:
        raise ValueError(f"two_layer_net_loss: expected 2 layers of params, got {len(params)}")
    hidden = relu(affine(x, params[0]["W"], params[0]["b"]))
    data = softmax_cross_entropy(affine(hidden, params[1]["W"], params[1]["b"]), labels)
    return data + l2_penalty(params, 2 * reg, mask=weights_only)
