"""Kosinski-style false-belief tasks (arXiv 2302.02083) as prompts with one-word answers.

- **Unexpected transfer** (Sally-Anne): A puts an object in container 1 and leaves; B moves it to
  container 2; A comes back. Where will A look? The false-belief answer is container 1. In the
  *control* (true belief) A stays and watches the move: container 2.
- **Unexpected contents** (Smarties): a container full of X is labelled Y; A cannot see inside
  and reads the label. What does A believe is inside? Y. In the *control* the container is
  transparent: X.

Each task is scored by comparing the model's log-probability of the two candidate words' first
tokens right after the prompt (the answer is always one of the two; chance is 50 %).
"""

from __future__ import annotations

import dataclasses
import random

NAMES = ("Sam", "Anna", "Tom", "Lucy", "Mark", "Nina", "Paul", "Rosa", "Omar", "Kate")
OBJECTS = ("cat", "ball", "toy", "hat", "phone", "cake", "doll", "watch")
CONTAINERS = ("box", "basket", "drawer", "bag", "jar", "closet", "bowl", "bucket")
HOLDERS = ("bag", "box", "jar", "tin", "carton", "packet")
CONTENTS = ("popcorn", "chocolate", "candy", "cookies", "nuts", "pasta", "rice", "buttons")
KINDS = ("transfer", "contents")


@dataclasses.dataclass(frozen=True)
class Task:
    """One prompt, its two candidate answers and which is right.

    Attributes:
      kind: ``"transfer"`` or ``"contents"``.
      control: True for the true-belief control.
      prompt: the text the model continues.
      candidates: the two answer words (without a leading space).
      label: index of the right candidate.
    """

    kind: str
    control: bool
    prompt: str
    candidates: tuple[str, str]
    label: int


def transfer_task(rng: random.Random, control: bool) -> Task:
    """An unexpected-transfer task (see the module docstring)."""
    a, b = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    c1, c2 = rng.sample(CONTAINERS, 2)
    start = f"{a} and {b} are in the room. {a} puts the {obj} in the {c1}."
    if control:
        middle = f" {a} stays in the room and watches {b} move the {obj} from the {c1} to the {c2}."
    else:
        middle = (
            f" {a} leaves the room. While {a} is away, {b} moves the {obj} from the {c1} to the"
            f" {c2}. {a} comes back."
        )
    prompt = start + middle + f" {a} will look for the {obj} in the"
    order = rng.random() < 0.5
    cands = (c1, c2) if order else (c2, c1)
    right = c2 if control else c1
    return Task("transfer", control, prompt, cands, cands.index(right))


def contents_task(rng: random.Random, control: bool) -> Task:
    """An unexpected-contents task (see the module docstring)."""
    a = rng.choice(NAMES)
    holder = rng.choice(HOLDERS)
    x, y = rng.sample(CONTENTS, 2)
    prompt = (
        f"Here is a {holder} filled with {x}. There is no {y} in the {holder}. Yet the label on"
        f" the {holder} says '{y}' and not '{x}'. {a} finds the {holder}."
    )
    if control:
        prompt += f" The {holder} is transparent, and {a} can see what is inside."
    else:
        prompt += f" {a} has never seen it before and cannot see inside. {a} reads the label."
    prompt += f" {a} believes that the {holder} is full of"
    order = rng.random() < 0.5
    cands = (x, y) if order else (y, x)
    right = x if control else y
    return Task("contents", control, prompt, cands, cands.index(right))


def make_tasks(n: int, seed: int, *, control: bool = False) -> list[Task]:
    """``n`` tasks alternating transfer / contents (seeded), false-belief or control."""
    rng = random.Random(f"false-belief-{seed}-{control}")
    return [(transfer_task if i % 2 == 0 else contents_task)(rng, control) for i in range(n)]


def candidate_ids(task: Task, encode) -> tuple[int, int]:
    """The first token id of each candidate after the prompt (``encode(text) -> list[int]``).

    Raises:
      ValueError: both candidates start with the same token, or a candidate changes the
        prompt's own tokens.
    """
    prompt = encode(task.prompt)
    ids = []
    for c in task.candidates:
        full = encode(task.prompt + " " + c)
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise ValueError(f"candidate {c!r} changes the prompt's tokens")
        ids.append(int(full[len(prompt)]))
    if ids[0] == ids[1]:
        raise ValueError(f"candidates {task.candidates} share their first token")
    return ids[0], ids[1]
