"""Tests of the belief-trace format and PBM (pbm.py) and the false-belief tasks."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from training.tom import false_belief, pbm, stories


def test_parse_trace_reads_numbered_steps_in_order():
    text = "Step 1: box\nStep 2: Basket\nStep 4: jar\nStep 3: bag"
    p = pbm.parse_trace(text, 3)
    assert p.steps == ("box", "basket") and p.answer is None
    assert text[: p.ends[1]].endswith("Basket")
    full = pbm.parse_trace("Step 1: box\nStep 2: bag\nStep 3: jar\nStep 4: x", 3)
    assert full.steps == ("box", "bag", "jar") and full.answer == "jar"


def test_step_labels_are_prefix_correct():
    gold = ["box", "bag", "bag", "jar"]
    assert pbm.step_labels(["box", "jar", "bag", "jar"], gold) == [True, False, False, False]
    assert pbm.step_labels(gold, gold) == [True] * 4
    assert pbm.step_labels(gold + ["jar"], gold) == [True] * 4 + [False]


def test_token_ends_map_character_offsets_to_tokens():
    pieces = ["Step", " 1", ":", " bo", "x", "\n", "Step", " 2", ":", " bag"]
    text = "".join(pieces)
    p = pbm.parse_trace(text, 2)
    assert pbm.token_ends(pieces, p.ends) == [4, 9]


def test_trace_prompt_holds_the_worked_example_gold_trace():
    s = stories.generate_story(1, num_events=3)
    q = stories.questions(s, 1, (2,))[0]
    prompt = pbm.trace_prompt(s, q, (s, q))
    gold = pbm.trace_text(stories.answer_trace(s, q))
    assert gold in prompt and prompt.endswith("Trace:\n")


def test_pbm_head_learns_a_separable_step_label():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = x[:, 2] + 0.1 * x[:, 0] > 0.3
    head = pbm.fit_head(x, y, steps=200, lr=0.05)
    p = pbm.score_steps(head, x)
    assert ((p > 0.5) == y).mean() > 0.95
    with pytest.raises(ValueError, match="do not match"):
        pbm.fit_head(x, y[:10])


def encode(text):
    """A word tokenizer: each word with its leading space is one token."""
    return [zlib.crc32(w.encode()) for w in re.findall(r"\s*\S+", text)]


@pytest.mark.parametrize("control", [False, True])
def test_false_belief_answers(control):
    tasks = false_belief.make_tasks(40, seed=0, control=control)
    for t in tasks:
        right = t.candidates[t.label]
        if t.kind == "transfer":
            first = t.prompt.split(" in the ")[2].split(".")[0]  # where it was put first
            assert (right == first) != control
        else:
            label = t.prompt.split("says '")[1].split("'")[0]
            assert (right == label) != control
    assert {t.kind for t in tasks} == set(false_belief.KINDS)
    assert 0.2 < np.mean([t.label for t in tasks]) < 0.8  # answer position is balanced
    ids = false_belief.candidate_ids(tasks[0], encode)
    assert ids[0] != ids[1]
