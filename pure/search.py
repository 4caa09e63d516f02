"""Grid and random search: baselines that only evaluate the loss, vectorised with vmap."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


def _best(candidates: Any, scores: jax.Array) -> tuple[Any, jax.Array]:
    # NaN scores are never chosen (unless every score is NaN).
    i = jnp.argmin(jnp.where(jnp.isnan(scores), jnp.inf, scores))
    return jax.tree_util.tree_map(lambda c: c[i], candidates), scores[i]


def grid_search(loss_fn: Callable[[dict[str, jax.Array]], jax.Array],
                grids: Mapping[str, Any]) -> tuple[dict[str, jax.Array], jax.Array]:
    """Evaluates ``loss_fn`` on every point of the Cartesian product of ``grids``.

    All candidates are evaluated in one ``vmap``-ed call (no Python loop over jit calls).

    Args:
      loss_fn: maps a dict ``{name: scalar}`` to a scalar loss; must be vmappable.
      grids: ``{name: 1-D array of values}``.

    Returns:
      ``(best_params, best_score)``: a dict of scalars and the lowest loss.

    Example:
      >>> best, score = grid_search(lambda p: (p["a"] - 1) ** 2 + p["b"] ** 2,
      ...                           {"a": jnp.linspace(-2, 2, 5), "b": jnp.array([-1.0, 0.0, 1.0])})
      >>> float(best["a"]), float(best["b"]), float(score)
      (1.0, 0.0, 0.0)
    """
    if not grids:
        raise ValueError("grid_search: grids must name at least one parameter")
    names = list(grids)
    axes = [jnp.asarray(grids[n]) for n in names]
    for n, a in zip(names, axes, strict=True):
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"grid_search: grid {n!r} must be a non-empty 1-D array, got shape {a.shape}")
    mesh = jnp.meshgrid(*axes, indexing="ij")
    candidates = {n: m.ravel() for n, m in zip(names, mesh, strict=True)}
    return _best(candidates, jax.vmap(loss_fn)(candidates))


def random_search(loss_fn: Callable[[Any], jax.Array], key: jax.Array, sampler: Callable[[jax.Array], Any],
                  num_samples: int) -> tuple[Any, jax.Array]:
    """Evaluates ``loss_fn`` at ``num_samples`` candidates drawn by ``sampler(key)``.

    Candidates are drawn and evaluated with ``vmap`` over split keys.

    Args:
      loss_fn: maps a candidate pytree to a scalar loss; must be vmappable.
      key: a PRNG key.
      sampler: maps a key to one candidate pytree.
      num_samples: a positive int.

    Returns:
      ``(best_params, best_score)``.

    Example:
      >>> sampler = lambda k: jax.random.uniform(k, (2,), minval=-3.0, maxval=3.0)
      >>> best, score = random_search(lambda p: jnp.sum((p - 1.0) ** 2), jax.random.key(0), sampler, 2000)
      >>> bool(score < 0.05)
      True
    """
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"random_search: num_samples must be a positive int, got {num_samples!r}")
    candidates = jax.vmap(sampler)(jax.random.split(key, num_samples))
    return _best(candidates, jax.vmap(loss_fn)(candidates))


