"""DEL-ToM belief traces and a process belief model (PBM) that scores their steps.

A *belief trace* answers a belief question after every event of a story, one line per event
(``Step 3: basket``). The model is prompted with :func:`trace_prompt` (an instruction and one
worked example), samples traces, and :func:`parse_trace` reads them back. The DEL simulator
(:mod:`training.tom.stories`, checked against :mod:`training.tom.kripke`) labels every step:
step ``i`` is correct iff its belief equals the simulator's after event ``i`` *and* every earlier
step is correct (:func:`step_labels`).

The PBM here is a logistic head on the frozen generator's final hidden state at the token that
ends each step (the same forward pass that sampled the trace; :func:`training.tom.lm.sample`),
trained by Adam on the simulator's labels (:func:`fit_head`), and scores a step with its
probability of being correct (:func:`score_steps`). :mod:`training.tom.bon` turns step scores
into a best-of-N choice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.tom.stories import Question, Story, answer_trace, question_text, render

INSTRUCTION = (
    "Read the story and track the belief step by step. After each numbered event, write where"
    " the question says the object is believed to be, as one word."
)
STEP = re.compile(r"Step (\d+): ([A-Za-z]+)")


def trace_text(containers: Sequence[str]) -> str:
    """``Step 1: box\\nStep 2: bag\\n...`` (no trailing newline)."""
    return "\n".join(f"Step {i}: {c}" for i, c in enumerate(containers, 1))


def story_block(story: Story, q: Question) -> str:
    """``Story:`` ... ``Question:`` ... ``Trace:`` (the part the trace continues)."""
    return f"Story:\n{render(story)}\nQuestion: {question_text(q)}\nTrace:\n"


def trace_prompt(story: Story, q: Question, example: tuple[Story, Question]) -> str:
    """The sampling prompt: instruction, one worked example with its gold trace, the story."""
    ex_story, ex_q = example
    worked = story_block(ex_story, ex_q) + trace_text(answer_trace(ex_story, ex_q))
    return f"{INSTRUCTION}\n\n{worked}\n\n{story_block(story, q)}"


@dataclasses.dataclass(frozen=True)
class ParsedTrace:
    """A sampled trace read back.

    Attributes:
      steps: the beliefs of ``Step 1``, ``Step 2``, ... as long as they are numbered in order.
      ends: for each step, the character offset just past its belief word in the text.
      answer: the belief of step ``num_events`` (None when the trace stops earlier).
    """

    steps: tuple[str, ...]
    ends: tuple[int, ...]
    answer: str | None


def parse_trace(text: str, num_events: int) -> ParsedTrace:
    """Reads ``Step i: word`` lines in order from the start of ``text`` (up to ``num_events``)."""
    steps, ends, pos = [], [], 0
    for line in text.split("\n"):
        m = STEP.match(line.strip())
        if not m or int(m.group(1)) != len(steps) + 1 or len(steps) == num_events:
            break
        steps.append(m.group(2).lower())
        ends.append(pos + line.index(m.group(2)) + len(m.group(2)))
        pos += len(line) + 1
    answer = steps[num_events - 1] if len(steps) >= num_events else None
    return ParsedTrace(tuple(steps), tuple(ends), answer)


def step_labels(steps: Sequence[str], gold: Sequence[str]) -> list[bool]:
    """Prefix correctness: step ``i`` is right iff steps ``0..i`` all equal the gold beliefs."""
    out, ok = [], True
    for i, s in enumerate(steps):
        ok = ok and i < len(gold) and s == gold[i]
        out.append(ok)
    return out


def token_ends(pieces: Sequence[str], char_ends: Sequence[int]) -> list[int]:
    """For each character offset in ``char_ends``, the index of the token whose text reaches it.

    Args:
      pieces: each generated token's text, in order (their concatenation is the trace text).
      char_ends: offsets just past each step's belief word (:class:`ParsedTrace` ``ends``).
    """
    out, j = [], 0
    bounds = np.cumsum([len(p) for p in pieces])
    for end in char_ends:
        while j < len(bounds) and bounds[j] < end:
            j += 1
        out.append(min(j, len(pieces) - 1))
    return out


@dataclasses.dataclass(frozen=True)
class PBMHead:
    """A logistic head on standardised features: ``p = sigmoid(((x - mean) / std) @ w + b)``."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: float


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
) -> PBMHead:
    """Trains the PBM head by Adam on the mean (class-balanced) logistic loss.

    Args:
      features: float ``[n, d]`` step features.
      labels: bool ``[n]`` simulator labels.
      steps: full-batch Adam steps.
      lr, weight_decay: Adam's learning rate and the L2 penalty on ``w``.

    Raises:
      ValueError: no examples or mismatched lengths.
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.float32)
    if x.ndim != 2 or len(x) == 0 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = jnp.asarray((x - mean) / std)
    pos = float(y.mean())
    # class-balanced weights: each class carries half the loss (when both occur)
    wts = np.where(y > 0, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6)) if 0 < pos < 1 else 1.0
    wts = jnp.asarray(np.broadcast_to(wts, y.shape), jnp.float32)
    yj = jnp.asarray(y)

    def loss(p):
        logits = z @ p["w"] + p["b"]
        ce = optax.sigmoid_binary_cross_entropy(logits, yj)
        return (ce * wts).mean() + weight_decay * jnp.sum(p["w"] ** 2)

    params = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return PBMHead(mean, std, np.asarray(params["w"]), float(params["b"]))


def score_steps(head: PBMHead, features: np.ndarray) -> np.ndarray:
    """Probability that each step is correct: float ``[n]`` from features ``[n, d]``."""
    z = (np.asarray(features, np.float32) - head.mean) / head.std
    return 1.0 / (1.0 + np.exp(-(z @ head.w + head.b)))
