"""The PNGs ``handgrad train --out`` writes, drawn with matplotlib's Agg backend (the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from handgrad.train.state import EpochRow, LMRow


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def curves(history: Sequence[EpochRow], path: str, metric: str, best_epoch: int | None = None) -> None:
    """Train and val loss, and the val metric, per epoch: where the two losses part is overfitting;
    both high and flat is underfitting."""
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(epochs, [r.train_loss for r in history], label="train", marker=".")
    left.plot(epochs, [r.val_loss for r in history], label="val", marker=".")
    left.set(xlabel="epoch", ylabel="loss (data term, no penalty)", title="loss")
    right.plot(epochs, [r.train_metric for r in history], label="train", marker=".")
    right.plot(epochs, [r.val_metric for r in history], label="val", marker=".")
    right.set(xlabel="epoch", ylabel=metric, title=f"{metric} (train − val gap: overfitting)")
    for ax in (left, right):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best val (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def weights(W: np.ndarray, path: str, config: dict[str, Any]) -> None:
    """A histogram of the first layer's weights: L1 piles them at zero (sparse), L2 keeps them small and even."""
    plt = _pyplot()
    w = np.ravel(W)
    near_zero = float(np.mean(np.abs(w) < 1e-3))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.hist(w, bins=101, color="tab:blue", alpha=0.85)
    ax.set_yscale("log")
    ax.set(xlabel="weight value", ylabel="count (log)",
           title=f"first-layer weights {W.shape}: l1={config['l1']:g}, l2={config['l2']:g}, "
                 f"weight decay={config['weight_decay']:g}")
    ax.text(0.02, 0.95, f"std {np.std(w):.3f}\n|w| < 1e-3: {near_zero:.1%}\nmax |w| {np.max(np.abs(w)):.3f}",
            transform=ax.transAxes, va="top", family="monospace")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grad_norms(history: Sequence[EpochRow], path: str, activation: str) -> None:
    """Each layer's weight-gradient norm (mean over the epoch's steps): with sigmoid in a deep
    net the first layers' norms fall orders of magnitude below the last's (vanishing gradients)."""
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    norms = np.array([r.grad_norms for r in history])
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for layer in range(norms.shape[1]):
        ax.plot(epochs, norms[:, layer], marker=".", label=f"layer {layer + 1} ‖∂L/∂W‖")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="gradient norm (log)", title=f"per-layer gradient norms ({activation})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bits_per_char(history: Sequence[LMRow], path: str, bigram: float) -> None:
    """The language model's validation (and training) bits per character over the steps, beside the bigram
    baseline's on the same validation bytes: below that line it has learned more than byte pairs."""
    plt = _pyplot()
    steps = [r.step for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(steps, [r.train_loss / np.log(2) for r in history], marker=".", label="train (mean since last row)")
    ax.plot(steps, [r.val_bits for r in history], marker=".", label="validation")
    ax.axhline(bigram, color="grey", linestyle="--", linewidth=1, label=f"bigram baseline ({bigram:.3f})")
    ax.set(xlabel="step", ylabel="bits per character", title="byte-level transformer on the standard library")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
