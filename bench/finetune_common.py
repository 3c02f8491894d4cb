"""What the fine-tuning benchmarks share: the one data loader (model, tokenizer and a task's
splits as token arrays: :func:`load_setup`), evaluation and the MeZO / Adam runners.

``bench.finetune`` (polarity), ``bench.data_finetune`` (sentences) and ``bench.training``
(``--llama``) load through here, so none imports another. The reusable training pieces live in
``training``: :class:`training.MaskedEntries` (a mask's entries as trainable vectors over the
frozen model) and :func:`training.choose_learning_rate`."""

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
from training import MaskedEntries  # noqa: F401 - the benches' sparse subspace
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


@dataclasses.dataclass
class LoadedModel:
    """A float model and its tokenizer, as :func:`load_model` returns them.

    Attributes:
      model: the Flax NNX Llama (float32).
      encode, decode: ``encode(text) -> list[int]``, ``decode(ids) -> str``.
      name: model description.
      gguf: the GGUF file (``None`` for the tiny model).
      tiny: the random tiny Llama with the toy tokenizer.
    """

    model: Any
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    name: str
    gguf: Any
    tiny: bool


def load_model(model_path: str | None = None, *, tiny: bool = False, seed: int = 0) -> LoadedModel:
    """SmolLM2-135M (or the GGUF at ``model_path``) dequantized to float32, or with ``tiny``
    the random 2-layer Llama and its toy tokenizer (``decode`` then writes ``w<id>`` words)."""
    if tiny:
        model, encode, name = tiny_model(seed)
        return LoadedModel(
            model, encode, lambda ids: " ".join(f"w{int(i)}" for i in ids), name, None, True
        )
    from pathlib import Path

    from ecf8_jax.io import gguf as gguf_io
    from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer

    path = gguf_io.smollm2_gguf_path() if model_path is None else Path(model_path)
    model = gguf_io.load_gguf_llama(path, cast=None)
    tok = gguf_tokenizer(path)
    return LoadedModel(
        model,
        lambda text: tok.encode(text).ids,
        lambda ids: tok.decode([int(i) for i in ids]),
        f"{path.name} dequantized to float32",
        path,
        False,
    )


def prompt_arrays(task, items, encode, label_ids, width: int | None = None):
    """``(tokens, last, labels)`` numpy arrays of ``items`` in ``task``'s prompt format
    (:mod:`training.tasks.polarity` or :mod:`training.tasks.sentences`), right-padded with 0 to
    ``width`` (at least; longer prompts keep their own width)."""
    b = task.make_prompt_batch(items, encode, label_ids, None)
    tokens = b.tokens
    if width is not None and tokens.shape[1] < width:
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))
    return tokens, b.last, b.labels


def load_setup(
    task,
    splits: dict[str, list],
    loaded: LoadedModel,
    *,
    extra_width: int = 0,
) -> Setup:
    """The one data loader of the fine-tuning benches: ``loaded``'s model split for training
    and ``task``'s ``splits`` as token arrays of one padded width.

    Args:
      task: :mod:`training.tasks.polarity` or :mod:`training.tasks.sentences` (anything with
        ``label_token_ids(encode)`` and ``make_prompt_batch(items, encode, label_ids, width)``).
      splits: ``{"train": items, "dev": items, "test": items}``, already cut and ordered.
      loaded: from :func:`load_model`.
      extra_width: padding beyond the longest prompt (room for longer texts in the same
        shape, e.g. rephrasings).

    Raises:
      ValueError: the label words are not one token each, or a parameter is not float.
    """
    label_ids = task.label_token_ids(loaded.encode)
    if label_ids is None:
        raise ValueError(f"{loaded.name}: the label words are not one token each")
    data = {k: prompt_arrays(task, v, loaded.encode, label_ids) for k, v in splits.items()}
    width = max(a[0].shape[1] for a in data.values()) + extra_width
    data = {
        k: (np.pad(t, ((0, 0), (0, width - t.shape[1]))), l, y) for k, (t, l, y) in data.items()
    }
    graphdef, params, rest = nnx.split(loaded.model, nnx.Param, ...)
    bad = [x.dtype for x in jax.tree.leaves(params) if not jnp.issubdtype(x.dtype, jnp.floating)]
    if bad:
        raise ValueError(f"{loaded.name}: non-float parameters {bad}")
    return Setup(
        loaded.name, graphdef, params, rest, label_ids, data, list(splits.get("train", []))
    )


POLARITY_WORDS = dict(train_words=None, dev_words=200, test_words=None)
"""The polarity words ``bench.finetune`` uses by default (None: the whole split)."""
TINY_POLARITY_WORDS = dict(train_words=64, dev_words=16, test_words=24)
"""... and with ``--tiny`` (a shuffled subset: the splits are sorted by word)."""


def polarity_setup(
    loaded: LoadedModel,
    *,
    train_words: int | None = None,
    dev_words: int | None = None,
    test_words: int | None = None,
) -> Setup:
    """The word-polarity task (:mod:`training.tasks.polarity`) on ``loaded``: the first
    ``*_words`` words of each split (all for None); with the tiny model a random subset of that
    size, so that both labels occur."""
    full = polarity.load()
    limits = {"train": train_words, "dev": dev_words, "test": test_words}
    splits = {k: v if limits[k] is None else v[: limits[k]] for k, v in full.items()}
    if loaded.tiny:  # a balanced, shuffled subset (the splits are sorted by word)
        rng = np.random.default_rng(0)
        splits = {
            k: [full[k][i] for i in rng.permutation(len(full[k]))[: len(v)]]
            for k, v in splits.items()
        }
    return load_setup(polarity, splits, loaded)


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
        z = training.Perturbation(distribution)
        step = training.mezo_step(loss_fn, tx, eps=eps, perturbation=z, return_projected_grad=True)
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


def loss_path(losses: Sequence[float]) -> str:
    """``"first → last"``: mean training loss of the first and of the last 10 steps (of the first
    and second half for runs under 20 steps, so that the two never overlap)."""
    k = max(1, min(10, len(losses) // 2))
    return f"{np.mean(losses[:k]):.3f} → {np.mean(losses[-k:]):.3f}"


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
