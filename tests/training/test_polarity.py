"""The word-polarity task: lexicon labels, a stable split by word, candidate scoring."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from training.tasks import polarity


def test_splits_are_disjoint_stable_and_labelled_by_the_lexicons():
    splits = polarity.load()
    words = {name: {e.word for e in exs} for name, exs in splits.items()}
    assert not (words["train"] & words["test"]) and not (words["dev"] & words["test"])
    total = sum(len(w) for w in words.values())
    assert total > 4000 and 0.07 < len(words["test"]) / total < 0.13
    labels = {e.word: e.label for exs in splits.values() for e in exs}
    assert labels["good"] == 1 and labels["terrible"] == 0 and labels["abhor"] == 0
    assert all(polarity.split_of(w) == name for name, ws in words.items() for w in ws)


def test_words_the_lexicons_disagree_on_are_dropped():
    vader, afinn = polarity.vader_lexicon(), polarity.afinn_lexicon()
    labels = {e.word: e.label for exs in polarity.load().values() for e in exs}
    for word in set(vader) & set(afinn):
        v = polarity._vote_vader(*vader[word])
        a = polarity._vote_afinn(afinn[word])
        if v is not None and a is not None and v != a:
            assert word not in labels


def _encode(text):  # one token per character: easy to check by hand
    return [ord(c) % 200 for c in text]


def test_candidate_scoring_prefers_the_label_the_logits_favour():
    examples = [polarity.Example("good", 1), polarity.Example("bad", 0)]
    batch = polarity.make_batch(examples, _encode)
    b, _, t = batch.tokens.shape
    assert batch.targets[0, 1].sum() == len(" positive")
    # Logits that predict every next token exactly: both candidates score 0 (log 1).
    tokens = batch.tokens.reshape(b * 2, t)
    logits = np.full((b * 2, t, 200), -30.0, np.float32)
    logits[np.arange(b * 2)[:, None], np.arange(t - 1)[None], tokens[:, 1:]] = 30.0
    scores = polarity.candidate_scores(jnp.asarray(logits), batch)
    np.testing.assert_allclose(np.asarray(scores), 0.0, atol=1e-6)
    # Now make the " positive" continuation of the first example unlikely.
    logits[1, :, :] = 0.0  # row 1: example 0 followed by " positive"
    loss, acc = polarity.loss_and_accuracy(jnp.asarray(logits), batch)
    assert float(acc) == 0.5  # example 0 now scores negative > positive: wrong
    assert float(loss) > 0.3


def _word_encode(text):  # one token per word (with its leading space): one-token label words
    import re

    return [sum(map(ord, piece)) % 197 + 1 for piece in re.findall(r"\s*\S+", text)]


def test_label_token_ids_need_one_token_per_label_word():
    ids = polarity.label_token_ids(_word_encode)
    assert ids == tuple(_word_encode(w)[0] for w in polarity.LABEL_WORDS)
    assert len(set(ids)) == 2
    assert polarity.label_token_ids(_encode) is None  # one token per character


def test_prompt_batch_scores_like_the_two_row_batch():
    examples = [polarity.Example(w, i % 2) for i, w in enumerate(["good", "bad", "awful", "x"])]
    ids = polarity.label_token_ids(_word_encode)
    pb = polarity.make_prompt_batch(examples, _word_encode, ids, length=16)
    assert pb.tokens.shape == (4, 16) and list(pb.labels) == [0, 1, 0, 1]
    assert all(pb.tokens[i, pb.last[i] + 1 :].sum() == 0 for i in range(4))  # right padding
    # A causal "model": the logits at a position depend on the tokens up to it only.
    table = np.random.default_rng(0).normal(size=(200, 200)).astype(np.float32)

    def logits_of(tokens):
        return jnp.asarray(table[tokens] + 0.1 * np.cumsum(table[tokens], axis=-2))

    two = polarity.make_batch(examples, _word_encode)
    b, _, t = two.tokens.shape
    loss2, acc2 = polarity.loss_and_accuracy(logits_of(two.tokens.reshape(b * 2, t)), two)
    last = logits_of(pb.tokens)[np.arange(4), pb.last]
    loss1, acc1, correct = polarity.choice_loss_and_accuracy(last, ids, pb.labels)
    np.testing.assert_allclose(float(loss1), float(loss2), rtol=1e-5)
    assert float(acc1) == float(acc2) == float(np.mean(np.asarray(correct)))
