"""The language model of ``handgrad train --model transformer``: its schedule and the compiled programs.

The model is :mod:`pure.transformer` (every derivative hand-written), trained with :func:`pure.optim.adamw`
through :func:`pure.train.make_train_step`: one jitted step, compiled once for the batch's shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import pure.optim
import pure.train
from handgrad.train.config import LMConfig
from handgrad.train.state import TrainState
from handgrad.train.text import VOCAB
from pure.transformer import init_transformer, lm_loss, transformer_logits, weights_only

BETAS = (0.9, 0.99)  # AdamW's moments: b2 0.99 rather than 0.999, as small character models use (nanoGPT's)
FLOOR = 0.1  # the cosine decay ends at this fraction of the peak learning rate


def schedule(config: LMConfig) -> pure.optim.Schedule:
    """Linear warmup from ``lr/warmup`` to ``lr`` over ``min(warmup, steps // 10)`` steps, then cosine decay to
    ``FLOOR · lr`` at the last step."""
    warmup = min(config.warmup, config.steps // 10)
    decay = pure.optim.cosine_decay(config.lr, config.steps - warmup, alpha=FLOOR)
    if not warmup:
        return decay

    def rate(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count)
        ramp = config.lr * (count + 1).astype(jnp.float32) / warmup
        return jnp.where(count < warmup, ramp, decay(count - warmup))

    return rate


class Programs(NamedTuple):
    """The jitted functions of a language-model run."""

    optimizer: pure.optim.GradientTransformation
    learning_rate: Callable[[int], Any]
    fresh: Callable[[], TrainState]
    step: pure.train.Step  # (params, opt_state, ids (B, seq_len + 1), key) -> (params, opt_state, metrics)
    loss: Callable[[Any, jax.Array], jax.Array]  # lm_loss, in nats


@functools.lru_cache(maxsize=4)
def programs(config: LMConfig) -> Programs:
    """The jitted functions of ``config`` (its :meth:`~LMConfig.trajectory`), built once per setting."""
    rate = schedule(config)
    optimizer = pure.optim.adamw(rate, *BETAS, weight_decay=config.weight_decay, mask=weights_only)

    @jax.jit  # one program, not one per eager op of the initialisation
    def fresh() -> TrainState:
        init_key, sample_key = jax.random.split(jax.random.key(config.seed))
        params = init_transformer(init_key, VOCAB, config.d_model, config.heads, config.layers, config.seq_len)
        return TrainState(params, optimizer.init(params), jax.random.key_data(sample_key))

    step = pure.train.make_train_step(lambda params, ids, key: lm_loss(params, ids), optimizer)
    return Programs(optimizer, jax.jit(rate), fresh, step, jax.jit(lm_loss))


@functools.lru_cache(maxsize=4)
def sampler(length: int, temperature: float) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """``sample(params, prompt, key) -> (length,)`` ids generated after ``prompt`` (``(seq_len,)`` ids), each from
    the last ``seq_len`` ids: drawn from ``softmax(logits / temperature)``, or the argmax at temperature 0.
    One program: a ``lax.scan`` over the new ids."""

    @jax.jit
    def sample(params: Any, prompt: jax.Array, key: jax.Array) -> jax.Array:
        def next_id(context: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
            logits = transformer_logits(params, context[None])[0, -1]
            new = jnp.argmax(logits) if temperature == 0 else jax.random.categorical(k, logits / temperature)
            new = new.astype(context.dtype)
            return jnp.concatenate([context[1:], new[None]]), new

        return lax.scan(next_id, prompt, jax.random.split(key, length))[1]

    return sample


def printable(ids: Any) -> str:
    """Byte ids as text fit for any terminal: printable ASCII, newlines and tabs as they are, any other byte ``?``."""
    return "".join(chr(b) if 32 <= b < 127 or b in (9, 10) else "?" for b in map(int, ids))
