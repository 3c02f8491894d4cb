"""Tests of best-of-N selection rules (training/tom/bon.py) on hand-made step scores."""

from __future__ import annotations

import math

import pytest

from training.tom import bon

# three traces: A (steady), B (one weak step, strong last), A again (weak)
ANSWERS = ["box", "bag", "box"]
SCORES = [[0.8, 0.7, 0.6], [0.9, 0.1, 0.95], [0.3, 0.4, 0.2]]


def test_aggregations_by_hand():
    s = SCORES[1]
    assert bon.aggregate(s, "min") == 0.1
    assert bon.aggregate(s, "last") == 0.95
    assert math.isclose(bon.aggregate(s, "product"), 0.9 * 0.1 * 0.95)
    assert math.isclose(bon.aggregate(s, "mean"), (0.9 + 0.1 + 0.95) / 3)
    assert bon.aggregate([], "mean") == 0.0


@pytest.mark.parametrize(
    "how, vanilla, weighted",
    [
        # min: A 0.6, B 0.1, A 0.2 -> vanilla A; weighted A 0.8 vs B 0.1 -> A
        ("min", "box", "box"),
        # last: A 0.6, B 0.95, A 0.2 -> vanilla B; weighted A 0.8 vs B 0.95 -> B
        ("last", "bag", "bag"),
        # product: A .336, B .0855, A .024 -> A; weighted A .36 vs B .0855 -> A
        ("product", "box", "box"),
        # mean: A .7, B .65, A .3 -> vanilla A; weighted A 1.0 vs B .65 -> A
        ("mean", "box", "box"),
    ],
)
def test_vanilla_and_weighted_rules_by_hand(how, vanilla, weighted):
    assert bon.best_of_n(ANSWERS, SCORES, how, "vanilla") == vanilla
    assert bon.best_of_n(ANSWERS, SCORES, how, "weighted") == weighted


def test_weighted_rule_can_outvote_the_single_best_trace():
    answers = ["jar", "box", "box"]
    scores = [[0.9], [0.5], [0.5]]
    assert bon.best_of_n(answers, scores, "last", "vanilla") == "jar"
    assert bon.best_of_n(answers, scores, "last", "weighted") == "box"  # 1.0 > 0.9


def test_majority_vote_and_ties_go_to_the_first_sampled():
    assert bon.majority_vote(["bag", "box", "box", None, None, None]) == "box"
    assert bon.majority_vote(["bag", "box", "box", "bag"]) == "bag"
    assert bon.majority_vote([None, None]) is None
    assert bon.best_of_n(["a", "b"], [[0.5], [0.5]], "min", "vanilla") == "a"


def test_unparsable_traces_are_never_chosen_over_parsable_ones():
    answers = [None, "box"]
    scores = [[1.0, 1.0], [0.01]]
    for rule in bon.RULES:
        assert bon.best_of_n(answers, scores, "min", rule) == "box"
    assert bon.best_of_n([None], [[1.0]], "min", "vanilla") is None


def test_bad_rule_and_aggregation_are_rejected():
    with pytest.raises(ValueError, match="rule"):
        bon.best_of_n(ANSWERS, SCORES, "min", "softmax")
    with pytest.raises(ValueError, match="aggregation"):
        bon.aggregate([0.5], "max")
    with pytest.raises(ValueError, match="score lists"):
        bon.best_of_n(ANSWERS, SCORES[:2], "min", "vanilla")
