"""Hi-ToM-style stories and their nested belief tables (pure Python, seeded, deterministic).

A story happens in one room. Every agent starts in the room and every object starts in a
container, in plain view (common knowledge). Then come events:

- ``enter`` / ``exit``: an agent enters or leaves the room (who is present decides who sees what);
- ``move``: a present agent moves an object to another container; every present agent sees it,
  absent agents do not (and the present ones know they did not);
- ``tell``: a present agent privately tells another agent (present or not) where an object is;
  only those two know it was said;
- ``announce``: a present agent tells everyone in the room where an object is.

Speakers only speak when they saw the object's last move, so every statement is true (Hi-ToM's
liars are left out: a lie needs belief revision past what the two models here share).

Beliefs are kept as Hi-ToM's generator keeps them, as nested belief tables: ``table[chain][obj]``
is where ``chain[0]`` thinks ``chain[1]`` thinks ... ``chain[-1]`` thinks ``obj`` is (``chain ==
()`` is where it really is). An event seen by the group ``G`` (common knowledge in ``G``, unseen
by everyone else, who keep their old beliefs and are known by ``G`` to keep them) sets the entry
of every chain made only of members of ``G``; every other entry stays. :mod:`training.tom.kripke`
derives the same beliefs by Dynamic Epistemic Logic product update, and the tests check the two
agree on thousands of stories.

Example::

    story = generate_story(seed=3)
    print(render(story))
    tables = belief_trace(story)          # one table per step, after each event
    q = questions(story, seed=3)[0]
    print(question_text(q), tables[-1][q.chain][q.obj])
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

AGENTS = (
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry",
)  # fmt: skip
ROOMS = ("kitchen", "garden", "office", "hall", "cellar", "attic")
OBJECTS = ("apple", "ball", "key", "book", "coin", "pen")
CONTAINERS = ("box", "basket", "drawer", "bag", "jar", "crate", "bucket", "suitcase")
KINDS = ("enter", "exit", "move", "tell", "announce")
KIND_WEIGHTS = {"enter": 2, "exit": 2, "move": 3, "tell": 1, "announce": 1}
"""How often :func:`generate_story` draws each kind (moves most, statements least)."""
MAX_ORDER = 4
"""Questions run from 0th order (reality) to 4th ("A thinks B thinks C thinks D thinks")."""

Chain = tuple[str, ...]
Table = dict[Chain, dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Event:
    """One step of a story.

    Attributes:
      kind: one of :data:`KINDS`.
      agent: who acts (enters, leaves, moves, speaks).
      obj: the object moved or spoken about (``""`` for enter / exit).
      container: where it is moved to / said to be (``""`` for enter / exit).
      listener: who is told privately (``tell`` only, else ``""``).
      observers: the agents who witness the event (common knowledge among them).
    """

    kind: str
    agent: str
    obj: str = ""
    container: str = ""
    listener: str = ""
    observers: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Story:
    """A room, its agents, objects and containers, where the objects start, and the events."""

    room: str
    agents: tuple[str, ...]
    objects: tuple[str, ...]
    containers: tuple[str, ...]
    initial: tuple[tuple[str, str], ...]  # (object, container), in plain view of everyone
    events: tuple[Event, ...]


@dataclasses.dataclass(frozen=True)
class Question:
    """``Where does chain[0] think ... chain[-1] thinks obj is?`` (order = len(chain))."""

    chain: Chain
    obj: str

    @property
    def order(self) -> int:
        return len(self.chain)


def chains(agents: Sequence[str], max_order: int = MAX_ORDER) -> list[Chain]:
    """Every chain of up to ``max_order`` agents without an agent twice in a row, ``()`` first.

    (``A thinks A thinks p`` is ``A thinks p`` in KD45 belief, so repeats add nothing.)
    """
    out: list[Chain] = [()]
    frontier: list[Chain] = [()]
    for _ in range(max_order):
        frontier = [c + (a,) for c in frontier for a in agents if not c or c[-1] != a]
        out.extend(frontier)
    return out


def initial_table(story: Story, max_order: int = MAX_ORDER) -> Table:
    """Every chain believes the initial placement (it was common knowledge)."""
    start = dict(story.initial)
    return {c: dict(start) for c in chains(story.agents, max_order)}


def update_table(table: Table, event: Event) -> Table:
    """The tables after ``event`` (a new dict; ``table`` is not modified).

    An event that changes or states where an object is sets that object's entry of every chain
    whose agents all observed it (and of ``()``, reality, for a move); all other entries stay.
    """
    if event.kind in ("enter", "exit"):
        return table
    seen = event.observers
    out = {}
    for chain, beliefs in table.items():
        if (chain == () and event.kind == "move") or (chain and all(a in seen for a in chain)):
            beliefs = {**beliefs, event.obj: event.container}
        out[chain] = beliefs
    return out


def belief_trace(story: Story, max_order: int = MAX_ORDER) -> list[Table]:
    """The nested belief tables after each event: ``len(story.events)`` tables."""
    table = initial_table(story, max_order)
    out = []
    for event in story.events:
        table = update_table(table, event)
        out.append(table)
    return out


def generate_story(
    seed: int,
    *,
    num_agents: int = 4,
    num_objects: int = 1,
    num_containers: int = 4,
    num_events: int = 8,
    kinds: Iterable[str] = KINDS,
) -> Story:
    """A random story, the same for the same arguments.

    Args:
      seed: the story's seed (``random.Random(seed)``; no global state).
      num_agents, num_objects, num_containers: drawn from :data:`AGENTS`, :data:`OBJECTS`,
        :data:`CONTAINERS`.
      num_events: how many events.
      kinds: the event kinds to draw from (a subset of :data:`KINDS`).

    Raises:
      ValueError: sizes beyond the name lists, or an unknown kind.
    """
    kinds = tuple(kinds)
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown event kinds {sorted(unknown)}; known: {KINDS}")
    weights = [KIND_WEIGHTS[k] for k in kinds]
    for n, pool, what in (
        (num_agents, AGENTS, "agents"),
        (num_objects, OBJECTS, "objects"),
        (num_containers, CONTAINERS, "containers"),
    ):
        if not 1 <= n <= len(pool):
            raise ValueError(f"num_{what} must be in 1..{len(pool)}, got {n}")
    if num_containers < 2:
        raise ValueError("a story needs at least 2 containers")
    rng = random.Random(seed)
    agents = tuple(rng.sample(AGENTS, num_agents))
    objects = tuple(rng.sample(OBJECTS, num_objects))
    containers = tuple(rng.sample(CONTAINERS, num_containers))
    room = rng.choice(ROOMS)
    initial = tuple((o, rng.choice(containers)) for o in objects)
    where = dict(initial)
    present = set(agents)
    # who saw (or was truthfully told) each object's current place: they may speak about it
    informed = {o: set(agents) for o in objects}
    events: list[Event] = []
    while len(events) < num_events:
        kind = rng.choices(kinds, weights)[0]
        inside = sorted(present, key=agents.index)
        outside = [a for a in agents if a not in present]
        if kind == "enter" and outside:
            a = rng.choice(outside)
            present.add(a)
            events.append(Event("enter", a, observers=frozenset(present)))
        elif kind == "exit" and len(inside) > 1:
            a = rng.choice(inside)
            events.append(Event("exit", a, observers=frozenset(present)))
            present.discard(a)
        elif kind == "move" and inside:
            a, o = rng.choice(inside), rng.choice(objects)
            c = rng.choice([c for c in containers if c != where[o]])
            where[o] = c
            informed[o] = set(present)
            events.append(Event("move", a, o, c, observers=frozenset(present)))
        elif kind == "tell" and inside:
            o = rng.choice(objects)
            speakers = [a for a in inside if a in informed[o]]
            if not speakers:
                continue
            a = rng.choice(speakers)
            b = rng.choice([x for x in agents if x != a])
            informed[o].add(b)
            seen = frozenset((a, b))
            events.append(Event("tell", a, o, where[o], listener=b, observers=seen))
        elif kind == "announce" and inside:
            o = rng.choice(objects)
            speakers = [a for a in inside if a in informed[o]]
            if not speakers:
                continue
            a = rng.choice(speakers)
            informed[o] |= present
            events.append(Event("announce", a, o, where[o], observers=frozenset(present)))
    return Story(room, agents, objects, containers, initial, tuple(events))


def event_text(event: Event, room: str) -> str:
    """One sentence for ``event``."""
    e = event
    if e.kind == "enter":
        return f"{e.agent} entered the {room}."
    if e.kind == "exit":
        return f"{e.agent} exited the {room}."
    if e.kind == "move":
        return f"{e.agent} moved the {e.obj} to the {e.container}."
    if e.kind == "tell":
        return f"{e.agent} privately told {e.listener} that the {e.obj} is in the {e.container}."
    return f"{e.agent} told everyone in the {room} that the {e.obj} is in the {e.container}."


def intro_text(story: Story) -> str:
    """The opening lines: who is in the room and where the objects are."""
    names = ", ".join(story.agents[:-1]) + f" and {story.agents[-1]}"
    places = " ".join(f"The {o} is in the {c}." for o, c in story.initial)
    return f"{names} are in the {story.room}. {places}"


def render(story: Story, numbered: bool = True) -> str:
    """The story as text: the opening line, then one line per event (``1. ...`` when numbered)."""
    lines = [intro_text(story)]
    for i, e in enumerate(story.events, 1):
        lines.append(f"{i}. {event_text(e, story.room)}" if numbered else event_text(e, story.room))
    return "\n".join(lines)


def question_text(q: Question) -> str:
    """``Where is the apple really?`` / ``Where does Alice think Bob thinks the apple is?``"""
    if not q.chain:
        return f"Where is the {q.obj} really?"
    rest = "".join(f" {a} thinks" for a in q.chain[1:])
    return f"Where does {q.chain[0]} think{rest} the {q.obj} is?"


def questions(
    story: Story, seed: int, orders: Iterable[int] = range(MAX_ORDER + 1)
) -> list[Question]:
    """One random question per order in ``orders`` (chains without an agent twice in a row)."""
    rng = random.Random(f"question-{seed}")
    out = []
    for order in orders:
        if not 0 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in 0..{MAX_ORDER}, got {order}")
        chain: list[str] = []
        for _ in range(order):
            chain.append(rng.choice([a for a in story.agents if not chain or a != chain[-1]]))
        out.append(Question(tuple(chain), rng.choice(story.objects)))
    return out


def answer_trace(story: Story, q: Question, tables: Sequence[Table] | None = None) -> list[str]:
    """The question's answer after each event (the gold belief trace): ``len(events)`` names."""
    tables = belief_trace(story, max(q.order, 1)) if tables is None else tables
    return [t[q.chain][q.obj] for t in tables]


def all_chains_equal(a: Table, b: Table) -> bool:
    """Whether two belief tables hold the same beliefs (for tests)."""
    return a.keys() == b.keys() and all(a[c] == b[c] for c in a)


__all__ = [
    "AGENTS",
    "CONTAINERS",
    "KINDS",
    "MAX_ORDER",
    "OBJECTS",
    "ROOMS",
    "Event",
    "Question",
    "Story",
    "all_chains_equal",
    "answer_trace",
    "belief_trace",
    "chains",
    "event_text",
    "generate_story",
    "initial_table",
    "intro_text",
    "question_text",
    "questions",
    "render",
    "update_table",
]
