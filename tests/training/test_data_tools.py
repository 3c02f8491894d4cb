"""Tests of the sentence task, the ALinFiK student and the OAT-Rephrase judge."""

from __future__ import annotations

import numpy as np
import pytest

from training import alinfik, rephrase, valuation
from training.tasks import polarity, sentences


def test_negating_frames_flip_the_word_label():
    pos = polarity.Example("wonderful", 1)
    s = sentences.sentence_of(pos)
    assert "wonderful" in s.text and s.word == "wonderful"
    assert s.label == (0 if s.negated else 1)
    both = {f[1] for f in sentences.FRAMES}
    assert both == {True, False}
    for frame, negates in sentences.FRAMES:
        made = sentences.Sentence(frame.format(word="bad"), int(negates))
        assert "bad" in made.text


def test_sentence_splits_follow_the_word_splits_and_mix_negation():
    splits = sentences.load()
    words = polarity.load()
    for name in ("train", "dev", "test"):
        assert [s.word for s in splits[name]] == [e.word for e in words[name]]
        negated = np.mean([s.negated for s in splits[name]])
        assert 0.35 < negated < 0.65, (name, negated)
    train_words = {s.word for s in splits["train"]}
    assert not train_words & {s.word for s in splits["test"]}


def test_prompt_batch_marks_the_last_prompt_token():
    def encode(text):  # one token per whitespace piece
        import re

        return [hash(p) % 1000 + 1 for p in re.findall(r"\s*\S+", text)]

    ids = sentences.label_token_ids(encode)
    assert ids is not None and len(ids) == 2
    data = sentences.load()["dev"][:5]
    b = sentences.make_prompt_batch(data, encode, ids)
    assert b.tokens.shape[0] == 5
    for i, s in enumerate(data):
        assert b.last[i] == len(encode(sentences.prompt(s.text))) - 1
        assert b.labels[i] == s.label


def test_student_learns_a_ranking_from_features_and_generalises():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    y = np.tanh(x[:, 0] * 2) + 0.5 * x[:, 1] * np.abs(x[:, 2]) + 0.05 * rng.normal(size=400)
    student = alinfik.train_student(x[:300], y[:300], hidden=(64,), steps=300, learning_rate=3e-3)
    assert student.losses[-1] < 0.3 * student.losses[0]
    pred = alinfik.predict(student, x[300:])
    assert valuation.spearman(pred, y[300:]) > 0.8
    # Predictions come back in target units.
    assert abs(pred.mean() - y[300:].mean()) < 0.3 * y.std()
    ranked = alinfik.train_student(
        x[:300], y[:300], hidden=(64,), steps=300, learning_rate=3e-3, target="rank"
    )
    assert valuation.spearman(alinfik.predict(ranked, x[300:]), y[300:]) > 0.8
    with pytest.raises(ValueError, match="features"):
        alinfik.predict(student, x[:, :8])
    with pytest.raises(ValueError, match="targets"):
        alinfik.train_student(x, y[:10])


def test_judge_accepts_only_faithful_new_sentences_with_the_same_zero_shot_label():
    orig = 'The trip was not "awful" in any sense.'
    ok = rephrase.judge(orig, "The trip was not awful at all.", 0.91, 1, 1)
    assert ok == rephrase.Judgement(True, "ok", 0.91)
    assert rephrase.judge(orig, "", 0.99, 1, 1).reason == "empty"
    assert rephrase.judge(orig, "the trip was NOT awful in any sense", 0.99, 1, 1).reason == "copy"
    assert rephrase.judge(orig, "I like trains.", 0.2, 1, 1).reason == "meaning"
    assert rephrase.judge(orig, "The trip was awful.", 0.85, 1, 0).reason == "label"
    assert not rephrase.judge(orig, "The trip was fine.", float("nan"), 1, 1).accept
    edge = rephrase.judge(orig, "The trip wasn't awful.", 0.8, 0, 0, threshold=0.8)
    assert edge.accept  # the threshold itself passes


def test_rewriter_prompt_explains_mezo_and_replies_are_parsed():
    assert "zeroth-order" in rephrase.REWRITER_SYSTEM and "negation" in rephrase.REWRITER_SYSTEM
    chat = rephrase.chat_prompt(rephrase.REWRITER_SYSTEM, rephrase.rewriter_user_prompt("x y"))
    assert chat.endswith("<|im_start|>assistant\n") and "x y" in chat
    assert rephrase.parse_rephrasing('Rewritten sentence: "The cafe was great."\n') == (
        "The cafe was great."
    )
    assert rephrase.parse_rephrasing("\n\n1. Nobody liked it.<|im_end|>junk") == "Nobody liked it."
    assert rephrase.parse_rephrasing("  \n") == ""
    np.testing.assert_allclose(rephrase.cosine([[1, 0], [1, 1]], [[1, 0], [-1, -1]]), [1, -1])
