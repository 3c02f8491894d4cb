"""What the fine-tuning benchmarks share: the task setup, model loading, evaluation and the
MeZO / Adam runners (``bench.finetune`` for the polarity task, ``bench.data_finetune`` for the
sentence task import them from here, so neither imports the other)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import training
from ecf8_jax.nn.stack import scan_layers
from training.tasks import polarity

PyTree = Any


EVAL_BATCH = 64


DATA_PARTS = ("sentences", "linfik", "selection", "oat")  # bench/data_finetune.py


@dataclasses.dataclass
class Setup:
    """A float model split for training, its tokenizer and the task's token arrays.

    Attributes:
      name: model description.
      graphdef, params, rest: ``nnx.split(model, nnx.Param, ...)``; ``params`` all float32.
      label_ids: the label words' token ids.
      data: ``{"train"|"dev"|"test": (tokens, last, labels)}`` numpy arrays, one padded width.
      train_examples: the training words (for the federated split).
    """

    name: str
    graphdef: Any
    params: PyTree
    rest: PyTree
    label_ids: tuple[int, ...]
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    train_examples: list[polarity.Example]


def toy_encode(vocab_size: int) -> Callable[[str], list[int]]:
    """A word-level toy tokenizer: each whitespace-separated piece (with its leading space) is
    one token, id from a hash (so the label words are one token each, as in SmolLM2)."""

    def encode(text: str) -> list[int]:
        pieces = re.findall(r"\s*\S+", text)
        return [
            1 + int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little") % (vocab_size - 1)
            for p in pieces
        ]

    return encode


def tiny_model(seed: int = 0):
    """A random float Llama (2 layers, width 64) and the toy tokenizer."""
    from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config, nnx.Rngs(seed), fp8=False)
    return model, toy_encode(config.vocab_size), "tiny random Llama (2 x 64, float32)"


def smollm2_float(model_path: str | None):
    """SmolLM2-135M (or another Llama GGUF) dequantized to float32, and its tokenizer."""
    from pathlib import Path

    from ecf8_jax.io import gguf as gguf_io
    from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer

    path = gguf_io.smollm2_gguf_path() if model_path is None else Path(model_path)
    model = gguf_io.load_gguf_llama(path, cast=None)
    tok = gguf_tokenizer(path)
    return model, (lambda s: tok.encode(s).ids), f"{path.name} dequantized to float32"


def last_logits(model, tokens: jax.Array, last: jax.Array) -> jax.Array:
    """Logits ``[B, V]`` at position ``last[b]`` of each row, heads applied there only.

    The same computation as ``model(tokens)[0][arange(B), last]`` (no cache, no padding mask:
    right padding cannot reach an earlier position under the causal mask) without the
    ``[B, T, V]`` output projection.
    """
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    inv_freq = model.inv_freq[...]
    index = jnp.zeros((), jnp.int32)

    def block(layer, x, _):
        x, _ = layer(x, positions, inv_freq, mask, None, index)
        return x, None

    x, _ = scan_layers(model.layers, block, model.embed_tokens(tokens), None)
    h = model.norm(x[jnp.arange(b), last])
    return model.embed_tokens.attend(h) if model.lm_head is None else model.lm_head(h)


def task_fns(s: Setup):
    """``(loss_fn(params, arrays), correct_fn(params, arrays))`` on ``(tokens, last, labels)``."""

    def outputs(params, arrays):
        tokens, last, labels = arrays
        logits = last_logits(nnx.merge(s.graphdef, params, s.rest), tokens, last)
        return polarity.choice_loss_and_accuracy(logits, s.label_ids, labels)

    return (lambda p, a: outputs(p, a)[0]), (lambda p, a: outputs(p, a)[2])


def lm_loss_fn(s: Setup):
    """Label-free next-token loss on the prompts (the mask's calibration loss)."""

    def loss(params, arrays):
        tokens, last, _ = arrays
        model = nnx.merge(s.graphdef, params, s.rest)
        logits = model(tokens)[0][:, :-1].astype(jnp.float32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
        valid = jnp.arange(tokens.shape[1] - 1)[None] < last[:, None]
        return -(logp * valid).sum() / valid.sum()

    return loss


def take(data, idx):
    """Rows ``idx`` of a ``(tokens, last, labels)`` triple, as jax arrays."""
    return tuple(jnp.asarray(x[idx]) for x in data)


def accuracy(correct_fn, params, data) -> float:
    """Accuracy over every row of ``data``, in fixed-size jitted batches."""
    fn = _jitted(correct_fn)
    n = len(data[2])
    hits = []
    for start in range(0, n, EVAL_BATCH):
        idx = np.arange(start, start + EVAL_BATCH) % n  # the last batch wraps; cut below
        hits.append(np.asarray(fn(params, take(data, idx)))[: min(EVAL_BATCH, n - start)])
    return float(np.concatenate(hits).mean())


_JIT_CACHE: dict[int, tuple[Callable, Callable]] = {}


def _jitted(fn):
    if id(fn) not in _JIT_CACHE:  # keeps fn alive, so its id is not reused
        _JIT_CACHE[id(fn)] = (fn, jax.jit(fn))
    return _JIT_CACHE[id(fn)][1]


@dataclasses.dataclass
class SparseDelta:
    """The masked entries of a parameter tree as trainable vectors over a frozen base.

    Attributes:
      index: per leaf, the flat indices the mask selects (leaves with none are frozen whole).
      count: how many entries are trainable.
    """

    index: list[np.ndarray]
    count: int

    @classmethod
    def from_mask(cls, mask: PyTree) -> SparseDelta:
        idx = [np.flatnonzero(np.asarray(m)).astype(np.int32) for m in jax.tree.leaves(mask)]
        return cls(idx, int(sum(len(i) for i in idx)))

    def values(self, params: PyTree) -> dict[str, jax.Array]:
        """The trainable vectors (float32), keyed by leaf number."""
        leaves = jax.tree.leaves(params)
        return {
            f"{i:04d}": jnp.ravel(leaves[i])[idx] for i, idx in enumerate(self.index) if len(idx)
        }

    def merge(self, base: PyTree, values: dict[str, jax.Array]) -> PyTree:
        """``base`` with the trainable entries replaced by ``values``."""
        leaves, treedef = jax.tree.flatten(base)
        out = []
        for i, (leaf, idx) in enumerate(zip(leaves, self.index, strict=True)):
            if len(idx):
                leaf = jnp.ravel(leaf).at[idx].set(values[f"{i:04d}"]).reshape(leaf.shape)
            out.append(leaf)
        return jax.tree.unflatten(treedef, out)


def sample_batches(n_train: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """``[steps, batch]`` training indices (each step without replacement)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_train, batch, replace=False) for _ in range(steps)])


def run_mezo(
    loss_fn,
    params,
    data,
    *,
    steps,
    batch,
    lr,
    eps,
    seed,
    prng="threefry2x32",
    distribution=training.DEFAULT_DISTRIBUTION,
    every=0,
    probe=None,
):
    """ZO-SGD (MeZO, no weight decay) for ``steps`` steps from a copy of ``params``.

    ``probe(step, params)`` is called every ``every`` steps (e.g. dev accuracy); its time is
    not counted.

    Returns:
      ``(params, wall_seconds, losses)``; the wall time is that of steps 2.. scaled to all
      steps (the first step's compilation excluded).
    """
    tx = training.zo_sgd(lr)
    cache_key = (id(loss_fn), lr, eps, distribution)
    if cache_key not in _STEP_CACHE:  # one compilation per loss, lr, eps and z distribution
        step = training.mezo_step(
            loss_fn, tx, eps=eps, distribution=distribution, return_projected_grad=True
        )
        _STEP_CACHE[cache_key] = (loss_fn, step)
    step = _STEP_CACHE[cache_key][1]
    params = jax.tree.map(jnp.array, params)  # the step donates its input
    idx = sample_batches(len(data[2]), batch, steps, seed)
    clock = []  # starts after the first step (its compilation); probes are not counted

    def on_step(t, p, loss):
        if t == 0:
            clock.append(time.perf_counter())
        if probe is not None and every and (t + 1) % every == 0:
            t0 = time.perf_counter()
            probe(t + 1, p)
            clock[0] += time.perf_counter() - t0

    params, _, _, losses = training.fit(
        step,
        params,
        tx.init(params),
        (take(data, i) for i in idx),
        root_key=jax.random.key(seed, impl=prng),
        on_step=on_step,
    )
    return params, _wall(clock[0] if clock else None, steps), losses


_STEP_CACHE: dict[tuple, tuple] = {}


def _wall(start, steps):
    if start is None or steps < 2:
        return None
    return (time.perf_counter() - start) * steps / (steps - 1)


def run_adam(loss_fn, params, data, *, steps, batch, lr, seed):
    """First-order Adam; returns ``(params, wall_seconds, losses)`` (compilation excluded)."""
    tx = optax.adam(lr)

    @jax.jit
    def step(p, state, b):
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state, loss

    opt_state = tx.init(params)
    idx = sample_batches(len(data[2]), batch, steps, seed)
    losses, start = [], None
    for t in range(steps):
        params, opt_state, loss = step(params, opt_state, take(data, idx[t]))
        losses.append(float(loss))
        if t == 0:
            start = time.perf_counter()
    return params, _wall(start, steps), losses


def markdown_table(rows: Sequence[dict], columns) -> str:
    """A markdown table of ``rows``; missing values print as ``n/a``."""
    lines = ["| " + " | ".join(c[1] for c in columns) + " |"]
    lines.append("|" + "|".join("---" if c[2] == "" else "---:" for c in columns) + "|")
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("n/a" if v is None else v if isinstance(v, str) else format(v, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
