"""The static tensor arena: one byte offset per intermediate tensor, planned from lifetimes.

The generated C has no ``malloc``: every intermediate tensor (and every operator's scratch
buffer, e.g. the im2col column of a convolution) lives in one static ``uint8_t`` array at an
offset fixed at generation time. The model's input and output are the caller's buffers and take
no arena space.

A buffer is *live* from the step of the operator that writes it to the step of the last operator
that reads it, both included (kernels never work in place, so an operator's inputs and outputs
are live together). Two buffers whose lifetimes intersect must not overlap in memory. Any valid
plan needs at least the largest sum of sizes live at one step (:func:`lower_bound`).

:func:`plan` tries two placements and keeps the smaller:

* *greedy by size* (TensorFlow Lite's planner): the largest buffers first, each at the lowest
  offset that does not collide with an already placed, time-overlapping buffer;
* *two-ended*: buffers in order of first use; each goes to the end opposite to the buffer it
  most recently collides with - the bottom (lowest free offset) or the top (highest free offset
  under the lower bound). For a chain of layers, where a tensor only meets its producer's input
  and its consumer's output, this ping-pong layout reaches the lower bound exactly: the largest
  input + output (+ scratch) of one layer.

Every plan is checked for overlaps before it is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Buffer", "Plan", "check_plan", "lower_bound", "plan"]

ALIGN = 16
"""Offsets are multiples of this many bytes (aligned vector loads on every target)."""


@dataclass(frozen=True)
class Buffer:
    """A block of ``size`` bytes live from step ``first`` to step ``last`` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def meets(self, other: Buffer) -> bool:
        """Whether the two lifetimes intersect."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Plan:
    """Offsets by buffer name and the arena size they need."""

    offsets: dict[str, int]
    size: int
    strategy: str


def _aligned(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def lower_bound(buffers: list[Buffer], align: int = 1) -> int:
    """The largest total size of buffers live at one step: no plan can be smaller."""
    steps = {b.first for b in buffers} | {b.last for b in buffers}
    return max((sum(_aligned(b.size, align) for b in buffers if b.first <= s <= b.last) for s in steps), default=0)


def _fit_low(size: int, taken: list[tuple[int, int]]) -> int:
    offset = 0
    for lo, hi in sorted(taken):
        if offset + size <= lo:
            break
        offset = max(offset, hi)
    return offset


def _fit_high(size: int, taken: list[tuple[int, int]], top: int) -> int | None:
    end = top
    for lo, hi in sorted(taken, key=lambda t: -t[1]):
        if hi <= end - size:
            break
        end = min(end, lo)
    return end - size if end - size >= 0 else None


def _greedy_by_size(buffers: list[Buffer], align: int) -> dict[str, int]:
    offsets: dict[str, int] = {}
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        taken = [(offsets[p.name], offsets[p.name] + _aligned(p.size, align)) for p in placed if p.meets(b)]
        offsets[b.name] = _fit_low(_aligned(b.size, align), taken)
        placed.append(b)
    return offsets


def _two_ended(buffers: list[Buffer], align: int) -> dict[str, int]:
    top = lower_bound(buffers, align)
    offsets: dict[str, int] = {}
    side: dict[str, str] = {}
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (b.first, -b.last, b.name)):
        size = _aligned(b.size, align)
        met = [p for p in placed if p.meets(b)]
        taken = [(offsets[p.name], offsets[p.name] + _aligned(p.size, align)) for p in met]
        latest = max(met, key=lambda p: (p.first, p.last), default=None)
        want = "top" if latest is not None and side[latest.name] == "bottom" else "bottom"
        where = _fit_high(size, taken, top) if want == "top" else None
        if where is None:
            where = _fit_low(size, taken)
            want = "bottom"
        offsets[b.name] = where
        side[b.name] = want
        placed.append(b)
    return offsets


def check_plan(buffers: list[Buffer], offsets: dict[str, int]) -> None:
    """Raise ``AssertionError`` if two live buffers overlap or an offset is misaligned."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1 :]:
            if a.meets(b) and a.size and b.size:
                oa, ob = offsets[a.name], offsets[b.name]
                if oa < ob + b.size and ob < oa + a.size:
                    raise AssertionError(f"arena plan overlaps live buffers {a.name} and {b.name}")


def plan(buffers: list[Buffer], align: int = ALIGN) -> Plan:
    """The smaller of the two placements (see the module docstring), checked."""
    best: Plan | None = None
    for strategy, place in (("two-ended", _two_ended), ("greedy-by-size", _greedy_by_size)):
        offsets = place(buffers, align)
        check_plan(buffers, offsets)
        size = max((offsets[b.name] + _aligned(b.size, align) for b in buffers), default=0)
        if best is None or size < best.size:
            best = Plan(offsets, size, strategy)
    assert best is not None
    return best
