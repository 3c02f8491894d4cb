"""Tests of the ToM story generator, its belief tables and the Kripke product update."""

from __future__ import annotations

import pytest

from training.tom import kripke, stories
from training.tom.stories import Event, Question, Story


def story(agents, start, events):
    """A hand-written story; observers of moves and announcements are computed from presence."""
    present, out = set(agents), []
    for kind, *rest in events:
        if kind == "exit":
            out.append(Event("exit", rest[0], observers=frozenset(present)))
            present.discard(rest[0])
        elif kind == "enter":
            present.add(rest[0])
            out.append(Event("enter", rest[0], observers=frozenset(present)))
        elif kind == "move":
            a, o, c = rest
            out.append(Event("move", a, o, c, observers=frozenset(present)))
        elif kind == "tell":
            a, b, o, c = rest
            out.append(Event("tell", a, o, c, listener=b, observers=frozenset((a, b))))
    objects = tuple(o for o, _ in start)
    containers = tuple(sorted({c for _, c in start} | {e.container for e in out} - {""}))
    return Story("room", tuple(agents), objects, containers, tuple(start), tuple(out))


SALLY_ANNE = story(
    ["Sally", "Anne"],
    [("marble", "basket")],
    [("exit", "Sally"), ("move", "Anne", "marble", "box"), ("enter", "Sally")],
)
THREE = story(
    ["Alice", "Bob", "Carol"],
    [("apple", "box")],
    [
        ("exit", "Alice"),
        ("move", "Bob", "apple", "basket"),
        ("tell", "Carol", "Alice", "apple", "basket"),
        ("exit", "Bob"),
        ("move", "Carol", "apple", "drawer"),
    ],
)


@pytest.mark.parametrize("trace", [stories.belief_trace, kripke.kripke_trace])
def test_sally_anne_false_belief(trace):
    final = trace(SALLY_ANNE)[-1]
    assert final[()]["marble"] == "box"
    assert final[("Anne",)]["marble"] == "box"
    assert final[("Sally",)]["marble"] == "basket"  # she did not see the move
    assert final[("Anne", "Sally")]["marble"] == "basket"  # Anne knows she did not
    assert final[("Sally", "Anne")]["marble"] == "basket"  # Sally does not know Anne moved it
    assert final[("Sally", "Anne", "Sally")]["marble"] == "basket"


@pytest.mark.parametrize("trace", [stories.belief_trace, kripke.kripke_trace])
def test_three_agent_story_with_a_private_tell(trace):
    final = trace(THREE)[-1]
    expected = {
        (): "drawer",
        ("Alice",): "basket",  # told by Carol
        ("Bob",): "basket",  # left before the last move
        ("Carol",): "drawer",
        ("Alice", "Bob"): "box",  # Alice did not see Bob move it
        ("Bob", "Alice"): "box",  # Bob did not hear the private tell
        ("Carol", "Alice"): "basket",
        ("Alice", "Carol"): "basket",
        ("Carol", "Bob"): "basket",
        ("Bob", "Carol"): "basket",  # Bob did not see the last move
        ("Alice", "Carol", "Bob"): "box",  # the tell said nothing about Bob
        ("Carol", "Alice", "Carol"): "basket",
        ("Carol", "Bob", "Alice", "Bob"): "box",
    }
    for chain, where in expected.items():
        assert final[chain]["apple"] == where, chain


def test_answer_trace_follows_the_question_step_by_step():
    q = Question(("Alice",), "apple")
    assert stories.answer_trace(THREE, q) == ["box", "box", "basket", "basket", "basket"]
    assert stories.question_text(q) == "Where does Alice think the apple is?"
    q2 = Question(("Alice", "Bob", "Carol"), "apple")
    assert (
        stories.question_text(q2) == "Where does Alice think Bob thinks Carol thinks the apple is?"
    )


def test_tables_and_kripke_product_update_agree_on_two_thousand_stories():
    # every step, every chain of up to 4 agents, every object; 2-4 agents, 1-2 objects
    mismatches, checked = [], 0
    for seed in range(2000):
        s = stories.generate_story(
            seed, num_agents=2 + seed % 3, num_objects=1 + seed % 2, num_events=3 + seed % 6
        )
        for step, (a, b) in enumerate(zip(stories.belief_trace(s), kripke.kripke_trace(s))):
            checked += 1
            if not stories.all_chains_equal(a, b):
                mismatches.append((seed, step))
    assert checked > 10_000 and not mismatches


def test_generated_stories_cover_every_event_kind_and_higher_order_false_beliefs():
    kinds, false_4th = set(), 0
    for seed in range(300):
        s = stories.generate_story(seed)
        kinds |= {e.kind for e in s.events}
        final = stories.belief_trace(s)[-1]
        false_4th += any(
            final[c][o] != final[()][o] for c in final if len(c) == 4 for o in s.objects
        )
    assert kinds == set(stories.KINDS)
    assert false_4th > 50  # 4th-order questions are not all answered by reality


def test_generation_is_deterministic_and_seeded():
    assert stories.generate_story(7) == stories.generate_story(7)
    assert stories.generate_story(7) != stories.generate_story(8)
    assert stories.questions(stories.generate_story(7), 7) == stories.questions(
        stories.generate_story(7), 7
    )


def test_every_statement_in_a_generated_story_is_true():
    for seed in range(200):
        s = stories.generate_story(seed, num_objects=2)
        where = dict(s.initial)
        for e in s.events:
            if e.kind == "move":
                where[e.obj] = e.container
            elif e.kind in ("tell", "announce"):
                assert e.container == where[e.obj]


def test_kripke_model_stays_small_after_contraction():
    s = stories.generate_story(5, num_agents=4, num_events=12)
    sizes = [len(m) for m in kripke.kripke_models(s)]
    assert max(sizes) <= 2**6, sizes  # 12 updates without contraction: up to 4096 worlds


def test_bad_story_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_agents"):
        stories.generate_story(0, num_agents=0)
    with pytest.raises(ValueError, match="unknown event kinds"):
        stories.generate_story(0, kinds=["fly"])
    with pytest.raises(ValueError, match="order"):
        stories.questions(stories.generate_story(0), 0, orders=[5])
