"""Review sentences with and without negation, as label-word classification (as in MeZO).

Provenance and license: no labelled sentence corpus ships in an installable package here (the
PyPI packages that load SST, IMDb or the VADER sentence sets download them at run time), so
the sentences are built from shipped resources. Each is one of :data:`FRAMES`, twelve review
sentences written for this task (public domain, this repository), filled with one polarity word
of :mod:`training.tasks.polarity` (the words the VADER lexicon, MIT license, and AFINN-165,
ODbL / Apache-2.0 package, rate with a clear margin and agree on). Six frames state the word's
sentiment and six negate it ("anything but ...", "nobody would call it ..."), so the label is
the word's polarity, flipped for a negating frame: a human-rated word composed by a
hand-written rule. A word gets one frame, chosen from a hash of the word; the split is the
polarity task's split by word (80 / 10 / 10), so test sentences use words never seen in
training.

This is a real sentence-level task in that the label depends on the sentence's structure
(negation), not on the word alone: a model that scores the word's polarity gets the negated
half wrong. It is a templated one, not natural reviews; results on it say nothing about
open-domain sentiment.

The model sees ``PROMPT.format(sentence=...)`` and is scored on the label words
:data:`LABEL_WORDS` after it, one token each in SmolLM2 (see :func:`label_token_ids`).
"""

from __future__ import annotations

import dataclasses
import hashlib

from training.tasks import polarity

LABELS = polarity.LABELS
PROMPT = "Review: {sentence}\nIs this review positive or negative? Answer:"
LABEL_WORDS = polarity.LABEL_WORDS
FRAMES: tuple[tuple[str, bool], ...] = (  # (frame, negates)
    ('The critic summed up the film in one word: "{word}".', False),
    ('If I had to describe my stay in one word, it would be "{word}".', False),
    ('Everyone who tried the new cafe called it "{word}".', False),
    ('My honest verdict on this phone: "{word}".', False),
    ('All the reviews of the concert used the same word: "{word}".', False),
    ('Looking back on the trip, "{word}" is the word that comes to mind.', False),
    ('The critic said the film was anything but "{word}".', True),
    ('Nobody who tried the new cafe would call it "{word}".', True),
    ('My stay was the exact opposite of "{word}".', True),
    ('I expected this phone to be "{word}", but it was the opposite.', True),
    ('Calling the concert "{word}" would be completely wrong.', True),
    ('The trip was not "{word}" in any sense.', True),
)


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One labelled sentence (label 0 = negative, 1 = positive) and how it was made."""

    text: str
    label: int
    word: str = ""
    negated: bool = False


def frame_of(word: str) -> tuple[str, bool]:
    """The frame of ``word`` (from a hash of the word, independent of its split)."""
    h = int.from_bytes(hashlib.sha256(b"frame:" + word.encode()).digest()[:4], "little")
    return FRAMES[h % len(FRAMES)]


def sentence_of(example: polarity.Example) -> Sentence:
    """The sentence made from one polarity word."""
    frame, negates = frame_of(example.word)
    label = 1 - example.label if negates else example.label
    return Sentence(frame.format(word=example.word), label, example.word, negates)


def load() -> dict[str, list[Sentence]]:
    """The three splits (``train``, ``dev``, ``test``), in the polarity task's word order."""
    return {k: [sentence_of(e) for e in v] for k, v in polarity.load().items()}


def summary(splits: dict[str, list[Sentence]]) -> str:
    """One line per split: size, positives, negated share."""
    lines = []
    for name, v in splits.items():
        pos, neg = sum(s.label for s in v), sum(s.negated for s in v)
        lines.append(f"{name}: {len(v)} sentences, {pos} positive, {neg} with negation")
    return "\n".join(lines)


def prompt(sentence: str) -> str:
    """The classification prompt for one sentence."""
    return PROMPT.format(sentence=sentence)


def label_token_ids(encode) -> tuple[int, ...] | None:
    """Each label word's token id after a prompt, or None unless every label word is one token."""
    text = prompt(FRAMES[0][0].format(word="good"))
    base = encode(text)
    ids = []
    for label_word in LABEL_WORDS:
        full = encode(text + label_word)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            return None
        ids.append(int(full[-1]))
    return tuple(ids)


def make_prompt_batch(
    sentences: list[Sentence], encode, label_ids: tuple[int, ...], length: int | None = None
) -> polarity.PromptBatch:
    """Tokenized prompts of ``sentences`` (:class:`training.tasks.polarity.PromptBatch`).

    Raises:
      ValueError: a prompt is longer than ``length``, or a label word is not the single token
        ``label_ids`` says after some prompt.
    """
    import numpy as np

    rows = []
    for s in sentences:
        ids = encode(prompt(s.text))
        for label_word, label_id in zip(LABEL_WORDS, label_ids, strict=True):
            if encode(prompt(s.text) + label_word) != ids + [label_id]:
                raise ValueError(f"{label_word!r} is not the token {label_id} after {s.text!r}")
        rows.append(ids)
    tokens = polarity._pad(rows, polarity._width(rows, length), np.int32)
    last = np.array([len(r) - 1 for r in rows], np.int32)
    labels = np.array([s.label for s in sentences], np.int32)
    return polarity.PromptBatch(tokens, last, labels)
