"""Word polarity as label-word classification (as in MeZO), from human-rated lexicons.

Data: the VADER lexicon (``vadersentiment``: each entry is the mean of 10 human ratings on
-4 .. +4, with their standard deviation) and AFINN-165 (``afinn``: one integer score on
-5 .. +5 per word). A word is labelled ``positive`` or ``negative`` when the lexicons that rate
it agree on the sign with a clear margin (VADER: |mean| >= 1 and std < |mean|; AFINN: |score|
>= 2); alphabetic words only; words the two lexicons disagree on are dropped. The split is by
word, from a hash of the word (so it never changes when a lexicon grows): 80 % train, 10 %
dev, 10 % test.

The model sees ``PROMPT.format(word=...)`` and is scored on the log-probability of each label
word's tokens after it (MeZO's candidate scoring: mean log-probability per candidate, then
cross-entropy over the candidates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import importlib.util

LABELS = ("negative", "positive")
PROMPT = "Is the word '{word}' positive or negative? Answer:"
LABEL_WORDS = (" negative", " positive")
SPLITS = {"train": (0, 80), "dev": (80, 90), "test": (90, 100)}


@dataclasses.dataclass(frozen=True)
class Example:
    """One word and its label (0 = negative, 1 = positive)."""

    word: str
    label: int


def _package_file(package: str, *parts: str):
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(f"the polarity task needs the package {package!r} (pip install)")
    return importlib.resources.files(package).joinpath(*parts)


def vader_lexicon() -> dict[str, tuple[float, float]]:
    """VADER: word -> (mean rating, standard deviation), ratings on -4 .. +4."""
    out = {}
    text = _package_file("vaderSentiment", "vader_lexicon.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out[parts[0]] = (float(parts[1]), float(parts[2]))
    return out


def afinn_lexicon() -> dict[str, int]:
    """AFINN-165: word -> integer score on -5 .. +5."""
    out = {}
    text = _package_file("afinn", "data", "AFINN-en-165.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        word, _, score = line.rpartition("\t")
        if word:
            out[word] = int(score)
    return out


def _vote_vader(mean: float, std: float) -> int | None:
    if abs(mean) >= 1.0 and std < abs(mean):
        return int(mean > 0)
    return None


def _vote_afinn(score: int) -> int | None:
    return int(score > 0) if abs(score) >= 2 else None


def split_of(word: str) -> str:
    """``train``, ``dev`` or ``test``, from a hash of the word."""
    bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % 100
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


def load() -> dict[str, list[Example]]:
    """The three splits, each sorted by word.

    Returns:
      ``{"train": [...], "dev": [...], "test": [...]}``.
    """
    vader, afinn = vader_lexicon(), afinn_lexicon()
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for word in sorted(set(vader) | set(afinn)):
        if not word.isalpha() or not word.isascii():
            continue
        votes = set()
        if word in vader:
            votes.add(_vote_vader(*vader[word]))
        if word in afinn:
            votes.add(_vote_afinn(afinn[word]))
        votes.discard(None)
        if len(votes) != 1:  # unrated with a clear margin, or the lexicons disagree
            continue
        splits[split_of(word)].append(Example(word, votes.pop()))
    return splits


def summary(splits: dict[str, list[Example]]) -> str:
    """One line per split: size and share of positive words."""
    lines = []
    for name, examples in splits.items():
        pos = sum(e.label for e in examples)
        lines.append(
            f"{name}: {len(examples)} words, {pos} positive, {len(examples) - pos} negative"
        )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Token arrays for scoring both label words after each prompt.

    Attributes:
      tokens: int32[B, 2, T] prompt + label word, right-padded with 0.
      targets: bool[B, 2, T]; True where position ``t``'s token is a label-word token (it is
        predicted from position ``t - 1``).
      labels: int32[B].
    """

    tokens: object
    targets: object
    labels: object


def _width(rows: list[list], length: int | None) -> int:
    """``length`` (default: the longest row), checked to hold every row."""
    width = length or max(len(r) for r in rows)
    if any(len(r) > width for r in rows):
        raise ValueError(f"a prompt needs more than {width} tokens")
    return width


def _pad(rows: list[list], width: int, dtype):
    """``rows`` right-padded with zeros into a ``[len(rows), width]`` numpy array."""
    import numpy as np

    out = np.zeros((len(rows), width), dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def make_batch(examples: list[Example], encode, length: int | None = None) -> Batch:
    """Tokenizes ``examples`` with ``encode(text) -> list[int]``.

    Args:
      examples: the words.
      encode: the tokenizer (e.g. ``lambda s: tok.encode(s).ids``).
      length: pad to this many tokens (default: the longest).
    """
    import numpy as np

    rows, marks = [], []
    for ex in examples:
        prompt = encode(PROMPT.format(word=ex.word))
        for label_word in LABEL_WORDS:
            answer = encode(PROMPT.format(word=ex.word) + label_word)[len(prompt) :]
            rows.append(prompt + answer)
            marks.append([False] * len(prompt) + [True] * len(answer))
    width = _width(rows, length)
    tokens, targets = _pad(rows, width, np.int32), _pad(marks, width, bool)
    b = len(examples)
    labels = np.array([ex.label for ex in examples], np.int32)
    return Batch(tokens.reshape(b, 2, width), targets.reshape(b, 2, width), labels)


def candidate_scores(logits, batch: Batch):
    """Mean log-probability of each label word: float32[B, 2], from logits [B * 2, T, V]."""
    import jax
    import jax.numpy as jnp

    b, _, t = batch.tokens.shape
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, :-1]  # predicts t + 1
    tokens = jnp.asarray(batch.tokens).reshape(b * 2, t)[:, 1:]
    picked = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    mask = jnp.asarray(batch.targets).reshape(b * 2, t)[:, 1:]
    mean = (picked * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1)
    return mean.reshape(b, 2)


def loss_and_accuracy(logits, batch: Batch):
    """Cross-entropy over the two candidates' scores, and the accuracy of their argmax."""
    loss, correct = _choice_loss(candidate_scores(logits, batch), batch.labels)
    return loss, correct.mean()


def _choice_loss(scores, labels):
    """Cross-entropy of float[B, 2] candidate scores against int[B] labels, and bool[B] hits."""
    import jax
    import jax.numpy as jnp

    labels = jnp.asarray(labels)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(scores, -1), labels[:, None], 1).mean()
    return loss, scores.argmax(-1) == labels


def label_token_ids(encode) -> tuple[int, ...] | None:
    """The token id of each label word after a prompt, when every label word is one token.

    Args:
      encode: the tokenizer (``encode(text) -> list[int]``).

    Returns:
      One id per entry of :data:`LABEL_WORDS`, or None when a label word takes several tokens
      (or changes the prompt's own tokens); then use :func:`make_batch`.
    """
    prompt = encode(PROMPT.format(word="good"))
    ids = []
    for label_word in LABEL_WORDS:
        full = encode(PROMPT.format(word="good") + label_word)
        if len(full) != len(prompt) + 1 or full[: len(prompt)] != prompt:
            return None
        ids.append(int(full[-1]))
    return tuple(ids)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts alone, for label words of one token each: half the rows of :class:`Batch`.

    With one-token label words, a candidate's mean log-probability is the log-probability of its
    token at the prompt's last position, so one row per example scores both candidates.

    Attributes:
      tokens: int32[B, T] prompts, right-padded with 0.
      last: int32[B], the position of each prompt's last token (it predicts the label word).
      labels: int32[B].
    """

    tokens: object
    last: object
    labels: object


def make_prompt_batch(
    examples: list[Example], encode, label_ids: tuple[int, ...], length: int | None = None
) -> PromptBatch:
    """Tokenizes the prompts of ``examples`` (see :class:`PromptBatch`).

    Args:
      examples: the words.
      encode: the tokenizer.
      label_ids: :func:`label_token_ids` of ``encode``.
      length: pad to this many tokens (default: the longest prompt).

    Raises:
      ValueError: a prompt is longer than ``length``, or a label word is not the single token
        ``label_ids`` says after some prompt.
    """
    import numpy as np

    rows = []
    for ex in examples:
        prompt = encode(PROMPT.format(word=ex.word))
        for label_word, label_id in zip(LABEL_WORDS, label_ids, strict=True):
            if encode(PROMPT.format(word=ex.word) + label_word) != prompt + [label_id]:
                raise ValueError(f"{label_word!r} is not the token {label_id} after {ex.word!r}")
        rows.append(prompt)
    tokens = _pad(rows, _width(rows, length), np.int32)
    last = np.array([len(r) - 1 for r in rows], np.int32)
    labels = np.array([ex.label for ex in examples], np.int32)
    return PromptBatch(tokens, last, labels)


def choice_loss_and_accuracy(last_logits, label_ids, labels):
    """:func:`loss_and_accuracy` from the logits at the prompts' last positions.

    Args:
      last_logits: float[B, V], the logits predicting the token after each prompt.
      label_ids: the label words' token ids (:func:`label_token_ids`).
      labels: int[B].

    Returns:
      ``(loss, accuracy, correct)``: the cross-entropy over the candidates' log-probabilities,
      its mean accuracy and the bool[B] per example.
    """
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1)
    loss, correct = _choice_loss(logp[:, jnp.asarray(label_ids)], labels)
    return loss, correct.mean(), correct
