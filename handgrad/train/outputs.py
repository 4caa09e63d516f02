"""What ``handgrad train --out`` writes: ``metrics.json``, ``params.npz`` and the plots, each whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from handgrad.train.run import host
from handgrad.train.state import metric_name


def _jsonable(value: Any) -> Any:
    """EpochRows (in ``history`` and the folds') as their JSON records."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _replace(path: str, write: Callable[[Any], Any]) -> None:
    """Writes a file beside ``path`` and renames it over ``path``: a run killed meanwhile leaves the old one whole."""
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


def write(summary: dict[str, Any], out: str, task: str, *, plots: bool = True) -> None:
    """The MLP's ``metrics.json``, ``params.npz`` and (with ``plots``) the three PNGs into ``out``."""
    layers = write_files(summary, out)
    if layers is None or not plots:
        return
    from handgrad.train import plots as draw

    draw.curves(summary["history"], os.path.join(out, "curves.png"), metric_name(task), summary.get("best_epoch"))
    draw.weights(layers[0]["W"], os.path.join(out, "weights.png"), summary["config"])
    draw.grad_norms(summary["history"], os.path.join(out, "grad_norms.png"), summary["config"]["activation"])


def write_files(summary: dict[str, Any], out: str) -> Any:
    """``metrics.json`` (the summary but its ``params``) and, when it has them, ``params.npz`` into ``out``: one
    array per leaf, named by its path in the parameter tree (``0/W``, ``blocks/1/qkv/b``). Returns the parameters
    in host memory, or None.

    Files already there (a damaged ``params.npz`` of an earlier run too) are replaced, never read."""
    os.makedirs(out, exist_ok=True)
    params = summary.get("params")
    record = _jsonable({k: v for k, v in summary.items() if k != "params"})
    _replace(os.path.join(out, "metrics.json"), lambda f: f.write(json.dumps(record, indent=2).encode()))
    if params is None:
        return None
    on_host = host(params)
    leaves = jax.tree_util.tree_flatten_with_path(on_host)[0]
    arrays = {jax.tree_util.keystr(path, simple=True, separator="/"): a for path, a in leaves}
    _replace(os.path.join(out, "params.npz"), lambda f: np.savez(f, **arrays))
    return on_host


def rescue(summary: dict[str, Any], checkpoint: str | None) -> str:
    """After ``--out`` failed: writes the results to a fresh temporary directory instead, and says where they
    are, and where the last ``checkpoint`` is (in words), in one line."""
    where = [checkpoint] if checkpoint else []
    try:
        fallback = tempfile.mkdtemp(prefix="handgrad-train-")
        write_files(summary, fallback)
        where.insert(0, f"metrics.json and params.npz are in {fallback} instead")
    except OSError as e:
        where.insert(0, f"writing them to a temporary directory failed too ({e.strerror or e})")
    return "; ".join(where)
