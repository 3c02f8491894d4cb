"""Choosing a learning rate: one run per candidate, the best on a held-out score kept.

ZO-SGD's useful step size depends on the model, the mask and the batch far more than a
first-order optimizer's does (MeZO's full-parameter lr of 1e-6…1e-7 is for 13 B models; a
135 M model takes a larger one, a 0.1 % mask a larger one still), so runs pick it on a dev
set: :func:`choose_learning_rate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class LearningRateChoice(NamedTuple):
    """The outcome of :func:`choose_learning_rate`.

    Attributes:
      learning_rate: the chosen learning rate.
      score: its score (higher is better).
      result: what ``train`` returned for it (the other runs' results are not kept).
      scores: every learning rate tried and its score, in the order tried.
    """

    learning_rate: float
    score: float
    result: Any
    scores: list[tuple[float, float]]


def choose_learning_rate(
    train: Callable[[float], Any],
    learning_rates: Sequence[float],
    score: Callable[[Any], float],
    *,
    on_trial: Callable[[float, float, Any], None] | None = None,
) -> LearningRateChoice:
    """Runs ``train(lr)`` for every learning rate and keeps the one ``score`` rates highest.

    Args:
      train: ``train(lr) -> result`` (e.g. trained parameters, or a tuple holding them).
      learning_rates: the candidates, tried in this order.
      score: ``score(result) -> float``, higher is better (e.g. dev accuracy). Ties go to the
        earlier learning rate; a NaN score never wins.
      on_trial: called as ``on_trial(lr, score, result)`` after each run (logging).

    Returns:
      A :class:`LearningRateChoice`. Only the best result is kept alive between runs, so a
      result may hold a model's parameters.
    """
    if not learning_rates:
        raise ValueError("choose_learning_rate needs at least one learning rate")
    best: tuple[float, float, Any] | None = None
    scores = []
    for lr in learning_rates:
        result = train(lr)
        value = float(score(result))
        scores.append((lr, value))
        if on_trial is not None:
            on_trial(lr, value, result)
        if best is None or value > best[1] or (best[1] != best[1] and value == value):
            best = (lr, value, result)
        del result
    lr, value, result = best
    return LearningRateChoice(lr, value, result, scores)


__all__ = ["LearningRateChoice", "choose_learning_rate"]
