"""Best-of-N selection of sampled belief traces by step scores (DEL-ToM, arXiv 2505.17348).

Each of N sampled traces has a final answer and one score per step (the process belief model's
probability that the step is correct). A trace's score aggregates its step scores:

- ``min``: the weakest step (a trace is as good as its worst step);
- ``last``: the last step's score;
- ``product``: the product of the step scores (probability that every step is right, if
  independent);
- ``mean``: the average step score.

Two rules pick the answer: ``vanilla`` takes the answer of the best-scored trace (argmax, ties
to the earlier sample) and ``weighted`` sums the trace scores per answer and takes the answer
with the largest sum (ties to the answer sampled first). The baselines are :func:`majority_vote`
(the most frequent answer) and the first sample alone. A trace without a parsable answer
(``None``) is never chosen while another is available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

AGGREGATIONS = ("min", "last", "product", "mean")
RULES = ("vanilla", "weighted")


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One trace's score from its step scores (each in [0, 1]); an empty trace scores 0.

    Raises:
      ValueError: an unknown aggregation.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; known: {AGGREGATIONS}")
    s = [float(x) for x in step_scores]
    if not s:
        return 0.0
    if how == "min":
        return min(s)
    if how == "last":
        return s[-1]
    if how == "product":
        return math.prod(s)
    return sum(s) / len(s)


def best_of_n(
    answers: Sequence[str | None], step_scores: Sequence[Sequence[float]], how: str, rule: str
) -> str | None:
    """The answer chosen among N traces.

    Args:
      answers: each trace's final answer (None: unparsable).
      step_scores: each trace's step scores.
      how: one of :data:`AGGREGATIONS`.
      rule: one of :data:`RULES`.

    Returns:
      The chosen answer (None only when every answer is None).

    Raises:
      ValueError: an unknown rule or aggregation, or lengths that differ.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")
    if len(answers) != len(step_scores):
        raise ValueError(f"{len(answers)} answers but {len(step_scores)} score lists")
    scores = [aggregate(s, how) for s in step_scores]
    live = [i for i, a in enumerate(answers) if a is not None]
    if not live:
        return None
    if rule == "vanilla":
        return answers[max(live, key=lambda i: (scores[i], -i))]
    total: dict[str, float] = {}
    for i in live:
        total[answers[i]] = total.get(answers[i], 0.0) + scores[i]
    first = {a: k for k, a in reversed(list(enumerate(answers[i] for i in live)))}
    return max(total, key=lambda a: (total[a], -first[a]))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer (ties to the one sampled first); None if there is none."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None
    order = list(counts)  # insertion order: first sampled first
    return max(order, key=lambda a: (counts[a], -order.index(a)))
