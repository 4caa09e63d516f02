"""The op table: one row per pure op, read by ``handgrad verify``, the property suite and the tests.

A row (:class:`~properties.op.Op`, written with keywords) holds the op (with its settings
bound), its independent reference, concrete example inputs that sit ON the special points
(exact zeros for relu/leaky_relu/l1, a tie for maximum, a hinge margin hit exactly, an all-zero
column for max_norm), Hypothesis strategies for the op's whole domain and for inputs a margin
away from every kink, and the laws (:mod:`properties.law`) that fit it beyond the universal
ones. The rows live in one module per module of pure/; adding an op is adding a row there.
"""

from __future__ import annotations

from properties.op import Op, bind
from properties.table import activations, attention, embedding, gates, layers, losses, nn, norms, regularizers, softmax

OPS: tuple[Op, ...] = (*gates.ROWS, *activations.ROWS, *layers.ROWS, *losses.ROWS, *regularizers.ROWS, *nn.ROWS,
                       *softmax.ROWS, *norms.ROWS, *embedding.ROWS, *attention.ROWS)
BY_NAME: dict[str, Op] = {op.name: op for op in OPS}

__all__ = ["BY_NAME", "OPS", "Op", "bind"]
