"""The policy's ghost list answers as the ``OrderedDict[str, int]`` it replaced."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache.ghosts import GhostList

keys = st.sampled_from([f"k{index}" for index in range(12)])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pop"), keys),
        st.tuples(st.just("remember"), keys, st.sampled_from([1, -1])),
        st.tuples(st.just("pop_oldest"), keys),
    ),
    max_size=300,
)


@settings(max_examples=200)
@given(steps=operations, bound=st.integers(min_value=1, max_value=8))
def test_the_ghost_list_keeps_the_order_and_the_sides_of_an_ordered_dict(
    steps: list[tuple[Any, ...]], bound: int
) -> None:
    # What the policy does with it: a miss pops its key; a departure pops the key, puts it in
    # at the recent end and, past the bound, takes the oldest out.
    ghosts, reference = GhostList(), OrderedDict[str, int]()
    for step in steps:
        name, key = step[0], step[1]
        if name == "pop":
            assert ghosts.pop(key) == reference.pop(key, 0)
        elif name == "remember":
            side = step[2]
            assert ghosts.pop(key) == reference.pop(key, 0)
            ghosts.append(key, side)
            reference[key] = side
            if len(reference) > bound:
                assert ghosts.pop_oldest() == reference.popitem(last=False)[1]
        elif reference:
            assert ghosts.pop_oldest() == reference.popitem(last=False)[1]
        assert len(ghosts) == len(reference)
        assert ghosts.oldest_keys(len(reference) + 1) == list(reference)
        assert all((key in ghosts) == (key in reference) for key in (key, "k0"))


def test_a_full_ghost_list_uses_the_record_it_took_out_again() -> None:
    ghosts = GhostList()
    for index in range(3):
        ghosts.append(f"k{index}", 1)
    assert ghosts.pop_oldest() == 1
    spare = ghosts._spare
    ghosts.append("k3", -1)
    assert ghosts._spare is None and spare is not None and spare.key == "k3"
    assert ghosts.oldest_keys(5) == ["k1", "k2", "k3"]
    assert ghosts.pop("k3") == -1 and ghosts.pop("k3") == 0
