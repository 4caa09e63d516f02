"""Distributions audited from their own constraints, with no configuration.

A class that declares ``arg_constraints`` (a dict of parameter name to constraint) and ``log_prob``, as
numpyro's distributions do (and torch.distributions', whose pattern numpyro follows), is a family of
rules: ``log_prob``, ``cdf`` and ``icdf`` where the class defines them, each with respect to the
parameters and the value, and ``rsample`` with respect to the parameters where it is reparametrized.

Each draw builds parameters from their constraints (real, positive, greater or less than a bound, an
interval, the unit interval, a simplex, a positive definite or Cholesky matrix; integers held fixed), builds
the distribution, and draws the value from its ``support``, whose bounds may depend on the parameters.
Parameters named as an ordered pair (``low`` and ``high``) are drawn in order. The branch draw puts every
real parameter at -1, where closed forms switch (a power law's alpha = -1). Constraints it cannot draw make
the rule's rows ``skipped``, naming them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from handgrad.audit.inputs import Inputs, NoInputs, short_dtype

METHODS = ("log_prob", "cdf", "icdf", "rsample")
SHAPE = (3,)  # the batch shape of every draw: three independent distributions
EVENT = 3  # the size of a vector or matrix event (a simplex, a covariance)
ORDERED = (("low", "high"), ("lower", "upper"), ("minval", "maxval"), ("min", "max"))
BRANCH_DRAW, BRANCH = 2, -1.0  # the draw that puts real parameters at a branch point, and the point
IMPLICIT = {"random_gamma"}  # samplers whose JVP is an implicit reparametrization (Figurnov et al., 2018)


def is_distribution(cls: type) -> bool:
    return (isinstance(getattr(cls, "arg_constraints", None), dict) and callable(getattr(cls, "log_prob", None))
            and not inspect.isabstract(cls))


def methods(cls: type) -> list[str]:
    """The methods of METHODS that ``cls`` defines: not the base class's (which raises NotImplementedError)."""
    root = [c for c in cls.__mro__ if "arg_constraints" in vars(c) or "log_prob" in vars(c)][-1]
    found = [m for m in METHODS[:3] if getattr(cls, m, None) is not None and
             (cls is root or getattr(cls, m) is not getattr(root, m, None))]
    if getattr(cls, "reparametrized_params", None):
        found.append("rsample")
    return found


def parameters(cls: type) -> list[str]:
    """The constructor's parameters that have a constraint and no default of None (``probs=None, logits=None``
    are alternatives: neither is drawn)."""
    signature = inspect.signature(cls.__init__)
    return [p.name for p in signature.parameters.values()
            if p.name in cls.arg_constraints and p.default is not None]  # type: ignore[attr-defined]


def rule_function(cls: type, method: str, names: list[str]) -> Callable:
    """fn(*parameters, value) (fn(*parameters) for rsample): the method of a distribution built from them."""
    def fn(*args: Any) -> Any:
        import jax

        dist = cls(**dict(zip(names, args, strict=False)))
        if method == "rsample":
            return dist.rsample(jax.random.key(0))
        return getattr(dist, method)(args[-1])

    fn.__name__ = f"{cls.__name__}.{method}"
    return fn


def drawer(cls: type, method: str, names: list[str]) -> Callable[[int, int], Inputs]:
    """draw(draw, seed): the parameters from their constraints, then the value from the support."""
    def draw(index: int, seed: int) -> Inputs:
        import jax

        dtype = "float64" if jax.config.read("jax_enable_x64") else "float32"
        rng = np.random.default_rng([seed, index])
        params = {n: _from(cls.arg_constraints[n], rng, dtype, f"parameter {n!r}",  # type: ignore[attr-defined]
                           branch=index == BRANCH_DRAW) for n in names}
        for low, high in ORDERED:
            if low in params and high in params:
                params[high] = (params[low] + np.abs(params[high]) + 0.5).astype(params[high].dtype)
        args = [params[n] for n in names]
        try:  # the class may need what its constraints do not say (a dimension, a base distribution)
            support = cls(**params).support
        except Exception as e:  # said, as a skip
            raise NoInputs(f"{cls.__name__}({', '.join(names)}) raised {type(e).__name__}: {e}") from None
        if method == "icdf":
            args.append((0.05 + 0.9 * rng.random(SHAPE)).astype(dtype))
        elif method != "rsample":
            args.append(_from(support, rng, dtype, "the value"))
        expect = ""
        if method == "rsample" and IMPLICIT & _applied(rule_function(cls, method, names), args):
            expect = ("sampled through jax.random.gamma, whose derivative is implicit reparametrization (the "
                      "sample's quantile held fixed), not the derivative of the sample at a fixed key: by design")
        described = ", ".join(f"{n}={short_dtype(str(a.dtype))}{list(a.shape)}" for n, a in zip(
            [*names, "value"], args, strict=False))
        return Inputs(tuple(jax.device_put(a) for a in args), "constraints", described, expect)

    return draw


def _applied(fn: Callable, args: list) -> set[str]:
    """The primitives fn applies; NoInputs where it cannot be traced (a sampler that is not reparametrized)."""
    import jax

    from reference.oracle.jaxprs import primitives

    try:
        return primitives(jax.make_jaxpr(fn)(*args))
    except Exception as e:  # NotImplementedError from rsample, a shape the class rejects: said, as a skip
        raise NoInputs(f"{getattr(fn, '__name__', 'fn')} raised {type(e).__name__}: {e}") from None


def _from(constraint: Any, rng: np.random.Generator, dtype: str, what: str, branch: bool = False) -> np.ndarray:
    """A draw of SHAPE inside ``constraint``, read by its attributes and class name."""
    kind = type(constraint).__name__.lower().strip("_")
    base = getattr(constraint, "base_constraint", None)
    if base is not None:  # independent(real, 1): the base constraint, with the event in SHAPE
        return _from(base, rng, dtype, what, branch)
    lower, upper = getattr(constraint, "lower_bound", None), getattr(constraint, "upper_bound", None)
    normal = rng.standard_normal(SHAPE)
    if getattr(constraint, "is_discrete", False):
        lo = 0 if lower is None else np.asarray(lower)
        hi = lo + 3 if upper is None else np.asarray(upper)
        return np.asarray(np.floor(lo + rng.random(SHAPE) * (hi - lo + 1)).clip(lo, hi), dtype=np.int32)
    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        value = lo + (0.05 + 0.9 * rng.random(SHAPE)) * (hi - lo)
    elif lower is not None:
        value = np.asarray(lower, dtype=float) + np.abs(normal) + 0.1
    elif upper is not None:
        value = np.asarray(upper, dtype=float) - np.abs(normal) - 0.1
    elif kind in ("real", "realvector", "realmatrix"):
        value = np.full(SHAPE, BRANCH) if branch else normal
    elif kind == "simplex":
        e = np.exp(rng.standard_normal(EVENT))
        value = e / e.sum()
    elif kind in ("positivedefinite", "lowercholesky", "softpluslowercholesky"):
        m = rng.standard_normal((EVENT, EVENT))
        value = m @ m.T / EVENT + np.eye(EVENT)
        value = np.linalg.cholesky(value) if "cholesky" in kind else value
    else:
        raise NoInputs(f"{what}: cannot draw from the constraint {type(constraint).__name__}")
    return np.asarray(value, dtype=dtype)
