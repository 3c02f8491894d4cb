"""Dynamic Epistemic Logic: Kripke models of where objects are, and event-model product update.

A :class:`KripkeModel` has worlds (each a valuation: the container of every object), one
accessibility relation per agent (``succ[agent][w]``: the worlds ``agent`` considers possible at
``w``) and an actual world. ``agent believes p at w`` iff ``p`` holds at every world in
``succ[agent][w]``; nested belief follows the relations in turn (:meth:`KripkeModel.believed`).

Every story event is an event model with two events, ``e`` (what happened: assign ``obj :=
container``, precondition true) and ``skip`` (nothing happened), and relations ``Q[a](e) = {e}``
for the observers ``a`` (they see it), ``Q[a](e) = {skip}`` for everyone else, ``Q[a](skip) =
{skip}`` for all. The product update (Baltag-Moss-Solecki) has worlds ``(w, x)``, valuation
``post_x(w)`` and ``(w, x) R_a (v, y)`` iff ``w R_a v`` and ``y ∈ Q[a](x)``; the actual world
becomes ``(actual, e)``. A statement (``tell`` / ``announce``) is the same assignment of the
true place: a trusted true statement makes the listener believe it even when they believed
otherwise, which an announcement (precondition ``obj = container``, no assignment) cannot do,
as it would leave a listener with a false belief no accessible world. Entering and leaving change
no belief (they only decide the observers of later events).

After each update the model keeps only the worlds reachable from the actual one and is
contracted to its bisimulation quotient, so it stays small (beliefs are invariant under both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from training.tom.stories import Event, Story, Table, chains

Valuation = tuple[str, ...]  # container per object, in the model's object order


@dataclasses.dataclass(frozen=True)
class KripkeModel:
    """A pointed multi-agent Kripke model over object locations.

    Attributes:
      objects: the objects, the order of every valuation.
      agents: the agents.
      worlds: one valuation per world.
      succ: ``succ[agent][w]``: the worlds ``agent`` considers possible at world ``w`` (never
        empty: belief is consistent).
      actual: the index of the actual world.
    """

    objects: tuple[str, ...]
    agents: tuple[str, ...]
    worlds: tuple[Valuation, ...]
    succ: dict[str, tuple[frozenset[int], ...]]
    actual: int

    @classmethod
    def common_knowledge(cls, story: Story) -> KripkeModel:
        """One world, where the story's objects start, every agent seeing only it."""
        objects = tuple(o for o, _ in story.initial)
        world = tuple(c for _, c in story.initial)
        succ = {a: (frozenset({0}),) for a in story.agents}
        return cls(objects, story.agents, (world,), succ, 0)

    def reachable(self, world: int, chain: Sequence[str]) -> frozenset[int]:
        """The worlds reached from ``world`` along ``chain[0]``'s relation, then ``chain[1]``'s..."""
        now = frozenset({world})
        for agent in chain:
            now = frozenset(v for w in now for v in self.succ[agent][w])
        return now

    def believed(self, chain: Sequence[str], obj: str) -> str:
        """Where ``chain[0]`` believes ... ``chain[-1]`` believes ``obj`` is (``()``: reality).

        Raises:
          ValueError: the belief is not one container (the worlds reached disagree) or no world
            is reached.
        """
        i = self.objects.index(obj)
        places = {self.worlds[w][i] for w in self.reachable(self.actual, chain)}
        if len(places) != 1:
            raise ValueError(f"{chain} do not believe one place of the {obj}: {sorted(places)}")
        return places.pop()

    def table(self, chain_list: Iterable[Sequence[str]]) -> Table:
        """Beliefs of every chain in ``chain_list`` about every object, as a belief table.

        Reachable sets are shared between a chain and its extensions (one relation step each).

        Raises:
          ValueError: as :meth:`believed`.
        """
        reach: dict[tuple[str, ...], frozenset[int]] = {(): frozenset({self.actual})}
        out: Table = {}
        for c in map(tuple, chain_list):
            if c not in reach:
                prefix = reach.get(c[:-1]) or self.reachable(self.actual, c[:-1])
                reach[c] = frozenset(v for w in prefix for v in self.succ[c[-1]][w])
            beliefs = {}
            for i, o in enumerate(self.objects):
                places = {self.worlds[w][i] for w in reach[c]}
                if len(places) != 1:
                    raise ValueError(f"{c} do not believe one place of the {o}: {sorted(places)}")
                beliefs[o] = places.pop()
            out[c] = beliefs
        return out

    def __len__(self) -> int:
        return len(self.worlds)


def product_update(model: KripkeModel, event: Event) -> KripkeModel:
    """The model after ``event`` (see the module docstring), reduced and contracted."""
    if event.kind in ("enter", "exit"):
        return model
    i = model.objects.index(event.obj)
    n = len(model.worlds)
    # world (w, x) -> index w + x * n, x = 0 for e (the event) and 1 for skip
    worlds = []
    for w in model.worlds:
        worlds.append(w[:i] + (event.container,) + w[i + 1 :])
    worlds.extend(model.worlds)
    succ = {}
    for a in model.agents:
        sees = a in event.observers
        rel = []
        for x in (0, 1):
            y = 0 if (x == 0 and sees) else 1
            for w in range(n):
                rel.append(frozenset(v + y * n for v in model.succ[a][w]))
        succ[a] = tuple(rel)
    return contract(KripkeModel(model.objects, model.agents, tuple(worlds), succ, model.actual))


def contract(model: KripkeModel) -> KripkeModel:
    """The generated submodel of the actual world, contracted to its bisimulation quotient."""
    seen, order = {model.actual}, [model.actual]
    for w in order:
        for a in model.agents:
            for v in model.succ[a][w]:
                if v not in seen:
                    seen.add(v)
                    order.append(v)
    # partition refinement: a world's block is its valuation and the blocks it can reach
    block = {w: model.worlds[w] for w in order}
    while True:
        sig = {
            w: (block[w],)
            + tuple(frozenset(block[v] for v in model.succ[a][w]) for a in model.agents)
            for w in order
        }
        ids: dict = {}
        new = {w: ids.setdefault(sig[w], len(ids)) for w in order}
        if len(ids) == len(set(block.values())):
            break
        block = new
    ids = {}
    rep = {}
    for w in order:
        b = ids.setdefault(sig[w], len(ids))
        rep.setdefault(b, w)
    index = {w: ids[sig[w]] for w in order}
    worlds = tuple(model.worlds[rep[b]] for b in range(len(ids)))
    succ = {
        a: tuple(frozenset(index[v] for v in model.succ[a][rep[b]]) for b in range(len(ids)))
        for a in model.agents
    }
    return KripkeModel(model.objects, model.agents, worlds, succ, index[model.actual])


def kripke_trace(story: Story, max_order: int = 4) -> list[Table]:
    """The belief tables after each event, by product update: like
    :func:`training.tom.stories.belief_trace`, derived independently."""
    model = KripkeModel.common_knowledge(story)
    all_chains = chains(story.agents, max_order)
    out = []
    for event in story.events:
        model = product_update(model, event)
        out.append(model.table(all_chains))
    return out


def kripke_models(story: Story) -> list[KripkeModel]:
    """The model after each event (for inspection: sizes, relations)."""
    model = KripkeModel.common_knowledge(story)
    out = []
    for event in story.events:
        model = product_update(model, event)
        out.append(model)
    return out
