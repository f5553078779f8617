"""The static arena planner: live buffers never overlap; a chain of layers reaches the minimum."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlaas_ci.ml.cgen.arena import ALIGN, Buffer, lower_bound, plan


@st.composite
def buffer_sets(draw):
    n = draw(st.integers(1, 24))
    out = []
    for i in range(n):
        first = draw(st.integers(0, 20))
        last = first + draw(st.integers(0, 6))
        out.append(Buffer(f"t{i}", draw(st.integers(1, 5000)), first, last))
    return out


def _overlaps(buffers, offsets):
    found = []
    for i, a in enumerate(buffers):
        for b in buffers[i + 1 :]:
            live_together = a.first <= b.last and b.first <= a.last
            oa, ob = offsets[a.name], offsets[b.name]
            if live_together and oa < ob + b.size and ob < oa + a.size:
                found.append((a.name, b.name))
    return found


@settings(max_examples=300, deadline=None)
@given(buffers=buffer_sets(), align=st.sampled_from([1, 4, ALIGN]))
def test_live_buffers_never_overlap(buffers, align):
    p = plan(buffers, align)
    assert _overlaps(buffers, p.offsets) == []
    assert all(off % align == 0 for off in p.offsets.values())
    assert all(p.offsets[b.name] + b.size <= p.size for b in buffers)
    assert p.size >= lower_bound(buffers, align)


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 100_000), min_size=2, max_size=30))
def test_a_chain_needs_only_its_largest_input_output_pair(sizes):
    # Layer i reads tensor i and writes tensor i + 1: tensor i is live at steps i - 1 and i.
    chain = [Buffer(f"t{i}", s, i - 1, i) for i, s in enumerate(sizes)]
    p = plan(chain, align=1)
    assert p.size == max(a + b for a, b in itertools.pairwise(sizes))
    assert _overlaps(chain, p.offsets) == []


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50_000), min_size=2, max_size=20),
    scratch=st.lists(st.integers(0, 5000), min_size=20, max_size=20),
)
def test_a_chain_with_scratch_buffers_reaches_the_lower_bound(sizes, scratch):
    # A convolution also needs its im2col column while it runs: live at its own step only.
    chain = [Buffer(f"t{i}", s, i - 1, i) for i, s in enumerate(sizes)]
    chain += [Buffer(f"s{i}", scratch[i], i, i) for i in range(len(sizes) - 1) if scratch[i]]
    p = plan(chain, align=ALIGN)
    assert p.size == lower_bound(chain, ALIGN)
    assert _overlaps(chain, p.offsets) == []
