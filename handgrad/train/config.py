"""What ``handgrad train`` is told: one dataclass a model, whose fields carry their own flags, choices and bounds.

The command line is built from :class:`TrainConfig` (the MLP) and :class:`LMConfig` (the transformer language
model) by :func:`add_arguments`, and every value is checked against the same field (:func:`check_fields`), so a
default, a choice or a bound is written once. A flag both models have (``--lr``, ``--batch-size``, ...) is one
option with each model's own default. This module imports no part of the ``train`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

import pure.nn
from handgrad.train.data import BUNDLED, TASKS


class TrainError(ValueError):
    """A run that cannot start as configured; the message is one line."""


def positive_ints(text: str) -> tuple[int, ...]:
    """``"128,64"`` -> ``(128, 64)``, for argparse."""
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def option(default: Any, group: str, help: str, *, choices: tuple | None = None, valid: Callable[[Any], bool] = None,
           want: str = "", parse: Callable[[str], Any] | None = None, metavar: str | None = None) -> Any:
    """A field of :class:`TrainConfig` with what its flag needs: argparse group, help, choices, and
    the bound ``valid`` (described as ``want``) that :meth:`TrainConfig.check` enforces."""
    meta = dict(group=group, help=help, choices=choices, valid=valid, want=want, parse=parse, metavar=metavar)
    return dataclasses.field(default=default, metadata=meta)


_at_least_1 = dict(valid=lambda v: v >= 1, want="≥ 1")
_non_negative = dict(valid=lambda v: v >= 0, want="≥ 0")
_optional_at_least = {k: dict(valid=lambda v, k=k: v is None or v >= k, want=f"≥ {k}") for k in (1, 2)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything ``handgrad train`` is told; the defaults reach ≥ 95% test accuracy on digits."""

    dataset: str = option("digits", "data", f"{', '.join(BUNDLED)} (default digits), or a .npz holding X and y")
    task: str | None = option(None, "data", "for a .npz: default classification for integer y, regression for "
                                            "float y", choices=TASKS)
    val_fraction: float = option(0.1, "data", "stratified validation split (default 0.1)")
    test_fraction: float = option(0.2, "data", "stratified test split, used once at the end (default 0.2)")
    kfold: int | None = option(None, "data", "K-fold cross-validation on train+val: mean ± std", metavar="K",
                               **_optional_at_least[2])
    hidden: tuple[int, ...] = option((128, 64), "model", "hidden widths (default 128,64)", parse=positive_ints,
                                     valid=lambda v: len(v) > 0 and min(v) >= 1, want="positive widths")
    activation: str = option("relu", "model", "hidden activation (default relu)", choices=tuple(pure.nn.ACTIVATIONS))
    init: str = option("he", "model", "weight initialisation (default he)", choices=pure.nn.INIT_SCHEMES)
    dropout: float = option(0.0, "model", "dropout rate on hidden units (default 0)", valid=lambda v: 0 <= v < 1,
                            want="in [0, 1)")
    loss: str | None = option(None, "loss", "for multi-class data (default softmax)", choices=tuple(pure.nn.LOSSES))
    l1: float = option(0.0, "loss", "l1 · Σ|W| penalty (default 0)", **_non_negative)
    l2: float = option(0.0, "loss", "l2/2 · ΣW² penalty (default 0)", **_non_negative)
    max_norm: float | None = option(None, "loss", "project each unit's incoming weights to norm ≤ c",
                                    parse=_float_or_none, valid=lambda v: v is None or v > 0, want="> 0")
    optimizer: str = option("sgd", "optimiser", "(default sgd)", choices=("sgd",))
    schedule: str = option("cosine", "optimiser", "learning-rate schedule (default cosine)",
                           choices=("constant", "cosine"))
    lr: float = option(0.05, "optimiser", "learning rate (default 0.05)", valid=lambda v: v > 0, want="> 0")
    momentum: float = option(0.9, "optimiser", "(default 0.9)", valid=lambda v: 0 <= v < 1, want="in [0, 1)")
    weight_decay: float = option(1e-4, "optimiser", "(default 0.0001)", **_non_negative)
    epochs: int = option(30, "run", "(default 30)", **_at_least_1)
    batch_size: int = option(64, "run", "(default 64)", **_at_least_1)
    seed: int = option(0, "run", "initialisation, data order, splits and dropout (default 0)")
    early_stopping: int | None = option(None, "run", "stop after PATIENCE epochs without a better val metric; keep "
                                                     "the best parameters", metavar="PATIENCE", **_optional_at_least[1])
    checkpoint_dir: str | None = option(None, "run", "write orbax checkpoints here", metavar="DIR")
    checkpoint_every: int = option(50, "run", "checkpoint every N steps within an epoch, and at each epoch's end "
                                              "(default 50)", metavar="N", **_at_least_1)
    resume: bool = option(False, "run", "continue from the newest checkpoint in --checkpoint-dir that reads back whole")
    reference: bool = option(False, "run", "also train with jax.grad + optax and report the largest parameter "
                                           "difference per epoch")
    out: str | None = option(None, "run", "write metrics.json, params.npz and plots here", metavar="DIR")
    plots: bool = option(True, "run", "with --out, draw curves.png, weights.png and grad_norms.png (default on)")

    def check(self) -> None:
        """Raises TrainError for a value outside its field's choices or bounds, or a combination that cannot run."""
        check_fields(self)
        if not self.kfold and not 0 < self.val_fraction < 1:
            raise TrainError(f"--val-fraction must be in (0, 1): the val split drives the table and early stopping, "
                             f"got {self.val_fraction}")
        if self.resume and not self.checkpoint_dir:
            raise TrainError("--resume needs --checkpoint-dir, the directory to resume from")
        if self.kfold and (self.checkpoint_dir or self.reference):
            raise TrainError("--kfold trains one model per fold; it does not combine with --checkpoint-dir "
                             "or --reference")

    def signature(self) -> dict[str, Any]:
        """The settings a checkpoint must agree on to be resumed: every one that shapes the trajectory."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k not in _OUTSIDE_THE_TRAJECTORY}

    def trajectory(self) -> TrainConfig:
        """These settings with the ones that do not shape the trajectory at their defaults: runs that differ only
        in where they write (resumed ones too) share one compiled program."""
        return dataclasses.replace(self, **{k: _DEFAULTS[k] for k in _OUTSIDE_THE_TRAJECTORY})


_OUTSIDE_THE_TRAJECTORY = ("checkpoint_dir", "resume", "out", "plots")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def check_fields(config: Any) -> None:
    """Raises TrainError for a field of ``config`` outside its choices or bounds (a float must be finite too)."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if meta["choices"] is not None and value is not None and value not in meta["choices"]:
            raise TrainError(f"{flag(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}")
        bad_float = isinstance(value, float) and not math.isfinite(value)
        if (meta["valid"] is not None and not meta["valid"](value)) or bad_float:
            raise TrainError(f"{flag(f.name)} must be {meta['want'] or 'finite'}, got {value}")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Everything ``handgrad train --model transformer`` is told (the data is fixed: :mod:`handgrad.train.text`).
    The defaults beat the bigram baseline by 0.8 bits per character in 3 minutes on 2 CPU cores (docs/training.md)."""

    d_model: int = option(128, "transformer", "model width (default 128)", **_at_least_1)
    heads: int = option(4, "transformer", "attention heads; they divide --d-model (default 4)", **_at_least_1)
    layers: int = option(2, "transformer", "transformer blocks (default 2)", **_at_least_1)
    seq_len: int = option(128, "transformer", "context length in bytes (default 128)", **_at_least_1)
    steps: int = option(600, "transformer", "training steps (default 600)", **_at_least_1)
    warmup: int = option(60, "transformer", "steps of linear learning-rate warmup, at most a tenth of --steps; "
                                            "then cosine decay to a tenth (default 60)", **_non_negative)
    eval_every: int = option(100, "transformer", "validate every N steps, and at the end (default 100)",
                             metavar="N", **_at_least_1)
    val_batches: int = option(16, "transformer", "validation windows: N batches of --batch-size, evenly spaced "
                                                 "through the validation files (default 16)", metavar="N",
                              **_at_least_1)
    sample: int = option(300, "transformer", "bytes of text generated at the end (default 300; 0 for none)",
                         metavar="N", **_non_negative)
    temperature: float = option(0.8, "transformer", "sampling temperature, 0 for greedy (default 0.8)",
                                **_non_negative)
    lr: float = option(3e-3, "optimiser", "AdamW's peak learning rate", valid=lambda v: v > 0, want="> 0")
    weight_decay: float = option(0.01, "optimiser", "AdamW's, on matrices and embeddings", **_non_negative)
    batch_size: int = option(16, "run", "windows of --seq-len + 1 bytes a step", **_at_least_1)
    seed: int = option(0, "run", "initialisation, batches and sampling")
    checkpoint_dir: str | None = option(None, "run", "write orbax checkpoints here", metavar="DIR")
    checkpoint_every: int = option(100, "run", "checkpoint every N steps", metavar="N", **_at_least_1)
    resume: bool = option(False, "run", "continue from the newest checkpoint in --checkpoint-dir")
    out: str | None = option(None, "run", "write metrics.json and params.npz here", metavar="DIR")
    plots: bool = option(True, "run", "with --out, draw the PNGs")

    def check(self) -> None:
        """Raises TrainError for a value outside its field's bounds, or a combination that cannot run."""
        check_fields(self)
        if self.d_model % self.heads:
            raise TrainError(f"--heads {self.heads} must divide --d-model {self.d_model}")
        if self.resume and not self.checkpoint_dir:
            raise TrainError("--resume needs --checkpoint-dir, the directory to resume from")

    def signature(self) -> dict[str, Any]:
        """The settings a checkpoint must agree on to be resumed: all but where it writes and the final sample."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _LM_OUTSIDE}

    def trajectory(self) -> LMConfig:
        """These settings with the ones outside the trajectory at their defaults (one compiled program for both)."""
        return dataclasses.replace(self, **{k: _LM_DEFAULTS[k] for k in _LM_OUTSIDE})


_LM_OUTSIDE = (*_OUTSIDE_THE_TRAJECTORY, "sample", "temperature")
_LM_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LMConfig)}
MODELS = {"mlp": TrainConfig, "transformer": LMConfig}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, then one option per field of :data:`MODELS`' configs, in argument groups, with the field's
    choices. A flag both models have is added once, its help giving each default. No option has an argparse
    default (:func:`from_arguments` takes the model's own), so the flags given are the attributes present."""
    groups: dict[str, Any] = {"model": parser.add_argument_group("model")}
    groups["model"].add_argument("--model", choices=tuple(MODELS), default="mlp",
                                 help="mlp (default) or transformer, a byte-level language model")
    seen: dict[str, tuple[Any, Any]] = {}  # flag -> (its action, the first model's default)
    for config in MODELS.values():
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if f.name in seen:
                action, default = seen[f.name]
                if f.default != default:
                    action.help += f"; --model {_model_of(config)}: {f.metadata['help']} (default {f.default})"
                continue
            meta = f.metadata
            group = groups.get(meta["group"]) or groups.setdefault(meta["group"],
                                                                   parser.add_argument_group(meta["group"]))
            kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": meta["help"], "dest": f.name}
            if isinstance(f.default, bool):
                kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
            else:
                kw["type"] = meta["parse"] or _value_type(hints[f.name])
                if meta["choices"] is not None:
                    kw["choices"] = meta["choices"]
                if meta["metavar"]:
                    kw["metavar"] = meta["metavar"]
            seen[f.name] = group.add_argument(flag(f.name), **kw), f.default


def _model_of(config: type) -> str:
    return next(name for name, c in MODELS.items() if c is config)


def _value_type(hint: Any) -> type:
    """``int`` for ``int`` or ``int | None``."""
    return next(t for t in typing.get_args(hint) if t is not type(None)) if typing.get_args(hint) else hint


def from_arguments(args: argparse.Namespace) -> TrainConfig | LMConfig:
    """The config of ``args.model`` (default mlp) from parsed command-line arguments: the flags given, the model's
    defaults for the rest. A flag of another model only is a TrainError (other attributes are ignored)."""
    model = getattr(args, "model", "mlp")
    config = MODELS[model]
    own = {f.name for f in dataclasses.fields(config)}
    given = {f.name for c in MODELS.values() for f in dataclasses.fields(c)} & set(vars(args))
    foreign = sorted(given - own)
    if foreign:
        raise TrainError(f"{flag(foreign[0])} is not an option of --model {model}")
    return config(**{name: getattr(args, name) for name in given})
