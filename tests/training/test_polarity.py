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
