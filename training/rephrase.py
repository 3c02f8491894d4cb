"""OAT-Rephrase (arXiv 2506.17264): rephrase training instances for zeroth-order fine-tuning.

Two stages:

1. A rewriter LLM is told how MeZO learns (:data:`REWRITER_SYSTEM`, written from the paper's
   description: two forward passes along a random direction, a single scalar of feedback per
   step, so instances whose label follows clearly and directly from plain wording give a
   less noisy signal) and writes rephrasings of each training instance
   (:func:`rewriter_user_prompt`, :func:`chat_prompt`, :func:`parse_rephrasing`).
2. A semantic judge keeps a rephrasing only if it is a real, different sentence, its sentence
   embedding's cosine to the original's is at least a threshold, and the zero-shot label the
   model gives it equals the one it gives the original (:func:`judge`).

MeZO then trains on the original, rephrased or combined sets. This module holds the prompts and
the rules; running the rewriter and the judge's models is the application's (``bench``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

REWRITER_SYSTEM = (
    "You rewrite training examples for a language model that is fine-tuned with MeZO, a "
    "zeroth-order optimizer. MeZO never sees gradients: at each step it nudges all weights "
    "along one random direction, compares the loss of two forward passes, and moves by that "
    "single number. The signal is weak and noisy, so it learns best from examples whose "
    "meaning and sentiment follow clearly and directly from plain, common wording that the "
    "model already reads well. Rewrite the example as one short, natural sentence with the "
    "same meaning and the same sentiment. Keep every negation. Do not add facts. Reply with "
    "the sentence only."
)
"""The rewriter's system prompt: what MeZO does and what makes an example easy for it."""

REWRITER_USER = "Rewrite this review sentence: {sentence}"


def rewriter_user_prompt(sentence: str) -> str:
    """The user turn asking for one rephrasing of ``sentence``."""
    return REWRITER_USER.format(sentence=sentence)


def chat_prompt(system: str, user: str) -> str:
    """A ChatML conversation (SmolLM2-Instruct's template) ending where the assistant speaks."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


_PREFIX = re.compile(
    r"^(rewritten|rephrased|rewrite|sentence|review|answer)\s*[^:]{0,20}:\s*", re.I
)


def parse_rephrasing(text: str) -> str:
    """The rephrasing in a rewriter's reply: its first non-empty line, stripped of a leading
    label ("Rewritten sentence:"), list marker and surrounding quotes; ``""`` if none."""
    text = text.split("<|im_end|>")[0]
    for line in text.splitlines():
        line = line.strip()
        line = _PREFIX.sub("", line)
        line = re.sub(r"^(\d+[.)]|[-*•])\s*", "", line).strip()
        if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
            line = line[1:-1].strip()
        if line:
            return line
    return ""


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows of ``a`` and ``b`` (``[..., D]``): float64 ``[...]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(den, 1e-12)


def normalized(text: str) -> str:
    """Lower-case words only (to tell a real rephrasing from a copy)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


class Judgement(NamedTuple):
    """The judge's decision on one rephrasing, and why.

    Attributes:
      accept: keep the rephrasing.
      reason: ``"ok"``, ``"empty"``, ``"copy"``, ``"meaning"`` (cosine below threshold) or
        ``"label"`` (the zero-shot label changed).
      cosine: the embedding cosine to the original (nan when not computed).
    """

    accept: bool
    reason: str
    cosine: float


DEFAULT_THRESHOLD = 0.8
"""MiniLM cosine a rephrasing must reach (all-MiniLM-L6-v2 paraphrases typically score >0.8)."""


def judge(
    original: str,
    candidate: str,
    cos: float,
    original_zero_shot: int,
    candidate_zero_shot: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> Judgement:
    """Accepts ``candidate`` as a rephrasing of ``original`` or says why not.

    Rules, in order: a candidate must be non-empty (``"empty"``) and not the original again up
    to case and punctuation (``"copy"``); its sentence-embedding cosine ``cos`` to the original
    must be at least ``threshold`` (``"meaning"``); the model's zero-shot label for it must
    equal the one for the original (``"label"``).

    Args:
      original, candidate: the sentences.
      cos: cosine of their sentence embeddings (e.g. MiniLM).
      original_zero_shot, candidate_zero_shot: the zero-shot labels the classifier gives them.
      threshold: the minimum cosine.
    """
    if not normalized(candidate):
        return Judgement(False, "empty", float("nan"))
    if normalized(candidate) == normalized(original):
        return Judgement(False, "copy", float(cos))
    if not cos >= threshold:  # nan fails too
        return Judgement(False, "meaning", float(cos))
    if int(candidate_zero_shot) != int(original_zero_shot):
        return Judgement(False, "label", float(cos))
    return Judgement(True, "ok", float(cos))


__all__ = [
    "DEFAULT_THRESHOLD",
    "REWRITER_SYSTEM",
    "REWRITER_USER",
    "Judgement",
    "chat_prompt",
    "cosine",
    "judge",
    "normalized",
    "parse_rephrasing",
    "rewriter_user_prompt",
]
