"""Probes along signed blocks of the flat vector: what :mod:`.search` reads to find needles in large leaves.

:func:`block_device` puts on the device, once per check, what every block probe reads; :func:`block_probes`
moves fn along blocks ``[lo, hi)`` and returns their :class:`~reference.oracle.differences.Probes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.differences import LEVEL_RATIO, Differences, Probes, chunked, jumps

# Each entry's step along a block is its scale times a random weight in [1 − SPREAD, 1 + SPREAD]: entries swapped,
# reversed or sorted within a block then change its sum by about SPREAD/√3 of their differences.
SPREAD = 0.5


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    """What block probes read: on the device the analytic VJP, per-entry weights (weights, entries) and each
    entry's signed step scale; on the host the running sums of ``analytic · signed`` and ``weights · |signed|``."""

    analytic: jax.Array
    weights: jax.Array
    signed: jax.Array
    along: np.ndarray
    weighted: np.ndarray
    nonfinite: np.ndarray  # the running count of entries whose analytic · signed is not finite
    contribution: np.ndarray  # |analytic · signed| per entry: what each entry adds to its block's analytic change


def block_device(diffs: Differences, analytic: np.ndarray, weights: Sequence[np.ndarray], scale: np.ndarray,
                 rng: np.random.Generator) -> BlockDevice:
    """What every block probe reads, once. Each entry moves by its step scale along the sign of its analytic
    VJP (a pseudo-random sign where that is 0), so that an error shared by many entries (a factor, a sign,
    a transpose) adds up over a block instead of cancelling; and by a random weight of its own in
    [1 − SPREAD, 1 + SPREAD], so that no rearrangement of the entries within a block leaves its change as it
    was (with |x| constant, a bias at its zero init, and gradients of one sign, a block's plain sum cannot see
    two entries swapped). ``weights`` (per entry, e.g. the analytic scale and the rule's allowance) are
    summed against each block's |displacement|. On the device: the analytic VJP, the weights and the signed
    scale; on the host, their running sums, from which a block's analytic change and weighted sums follow
    for exact leaves."""
    pseudo = 1.0 - 2.0 * ((np.arange(diffs.flat.size, dtype=np.uint64) * 2654435761) // 65536 % 2)
    spread = 1.0 + SPREAD * (2.0 * rng.random(diffs.flat.size) - 1.0)
    signed = np.where(analytic > 0, 1.0, np.where(analytic < 0, -1.0, pseudo)) * scale * spread
    stacked = np.stack([np.asarray(w, np.float64) for w in weights])
    term, weighted = analytic * signed, stacked * np.abs(signed)
    finite = np.isfinite(term)
    # Running sums of the finite terms, and a running count of the others: a block holding an inf or NaN VJP
    # has a NaN change, and the blocks after it keep theirs.
    sums = (np.concatenate([[0.0], np.cumsum(np.where(finite, term, 0.0))]),
            np.concatenate([np.zeros((len(weights), 1)), np.cumsum(np.where(np.isfinite(weighted), weighted, 0.0),
                                                                   axis=1)], axis=1),
            np.concatenate([[0], np.cumsum(~finite)]))
    with diffs.version.context():
        analytic_, stacked_, signed_ = (jnp.asarray(v, diffs.work) for v in (analytic, stacked, signed))
    return BlockDevice(analytic_, stacked_, signed_, *sums, np.abs(term))


@np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN and inf are judged, not warned of
def block_probes(diffs: Differences, lo: np.ndarray, hi: np.ndarray, step: float, levels: Sequence[int],
                 device: BlockDevice) -> tuple[Probes, np.ndarray]:
    """Probes along the blocks ``[lo, hi)``; also returns, per block and per unit of the probe, the sums
    Σ wᵢ|Δᵢ| of ``device``'s weights (shaped (weights, blocks)), at the first level.

    ``device`` is what :func:`block_device` put on the device.
    """
    rows, n_levels, n_weights = len(lo), len(levels), device.weights.shape[0]
    t = np.array([[step / LEVEL_RATIO**k * m for m in (1, -1, 2, -2)] for k in levels])  # (levels, 4)
    lo_, hi_ = (np.tile(np.repeat(v, 4), n_levels) for v in (lo, hi))
    tt = np.repeat(t[:, None, :], rows, axis=1).ravel()
    arrays = (device.analytic, device.weights, device.signed)
    found = chunked(diffs, diffs.programs.blocks, [lo_, hi_, tt], [jnp.int32, jnp.int32, diffs.work], arrays)
    if diffs.programs.exact:
        found += [np.where(device.nonfinite[hi_] > device.nonfinite[lo_], np.nan,
                           tt * (device.along[hi_] - device.along[lo_])),
                  *(np.abs(tt) * (w[hi_] - w[lo_]) for w in device.weighted)]
    s, n, e, *weighted = (v.reshape(n_levels, rows, 4).transpose(2, 0, 1) for v in found)
    eta = t[:, 0][:, None]
    w1, w2 = 2 * eta, 4 * eta
    probes = Probes(d1=(s[0] - s[1]) / w1, d2=(s[2] - s[3]) / w2, a1=(e[0] - e[1]) / w1, a2=(e[2] - e[3]) / w2,
                    round1=(n[0] + n[1]) / w1, round2=(n[2] + n[3]) / w2,
                    fwd=(s[0] - e[0]) / eta, bwd=(s[1] - e[1]) / -eta, fwd2=(s[2] - e[2]) / (2 * eta),
                    bwd2=(s[3] - e[3]) / (-2 * eta), side_round=(n[0] + n[1]) / eta,
                    side_round2=(n[2] + n[3]) / (2 * eta), finite=np.all(np.isfinite(s), axis=0),
                    jump=jumps(s, n))
    return probes, np.stack([(w[0][0] + w[1][0]) / w1[0] for w in weighted]).reshape(n_weights, rows)
