"""Exact greedy k-center by *lazy* evaluation, compiled with numba (the CPU path of
:func:`engine.coreset.greedy_coreset`).

Why kolektorsdd defeated the pruned path: pruning skips a row only when the new centre is
provably no nearer than the row's current one, ``d(c_new, c_a(x)) >= 2 r(x)``. On
nearly equidistant patches (kolektorsdd's plain grainy plastic: a typical distance between
two patches is only ~2x the final coverage radius, against ~4x on tire) that test rarely
fires, and each step re-measures about a third of all rows, each a row gathered from the
whole ``(N, d)`` array (memory-bound): 12-40x the time of tire for the same patch count.

Lazy greedy does not touch a row until it could be the answer. Each row keeps ``r2(x)``, its
squared distance to the nearest of the centres it has *seen* (``0 .. last(x)``): an upper
bound on its true distance to the selection. The rows sit in a max-heap keyed by that bound.
A step looks at the top row: if it has seen every centre its bound is exact and, being the
largest of all upper bounds, it is the farthest row (the greedy pick). Otherwise it is
measured against the centres added since it last looked, in order, stopping as soon as its
bound falls below the heap's next one (it cannot win this step; the centres it has not seen
yet wait for its next turn at the top), and sifted down. The pick sequence and the radius
are those of the dense rule: ties go to the lowest row index, as ``argmax`` does, and a
chosen row leaves the heap.

On kolektorsdd (208,544 patches, k = 20,854) a step measures ~70,000 distances, a third of
one per row: about as many as the pruned path, but each from one row held in the cache
against centres read in order (~10 ns at d = 128) instead of rows gathered from all over
memory: 20.7 s against 482 s (docs/BENCHMARKS.md, "Coreset selection"). Distances are
``sum((x - c)^2)`` in float32, like the rows (no cancellation, unlike ``|x|² + |c|² -
2 x·c``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

# reassociation lets LLVM vectorise the distance sums; no assumption about NaN or inf
_FAST = {"reassoc", "contract"}


@njit(cache=True, fastmath=_FAST)
def _dist2(z: np.ndarray, x: int, centres: np.ndarray, j: int) -> np.float32:
    """``|z[x] - centres[j]|²``, summed in float32 (vectorised; an early exit once the
    partial sum passes the row's bound measured slower: LLVM leaves short loops scalar)."""
    acc = np.float32(0.0)
    for t in range(z.shape[1]):
        diff = z[x, t] - centres[j, t]
        acc += diff * diff
    return acc


@njit(cache=True)
def _below(r2: np.ndarray, a: int, b: int) -> bool:
    """Key of row ``a`` below that of row ``b``: key = (bound, -row), so that among equal
    bounds the lowest row wins, as ``argmax`` picks the first maximum."""
    return r2[a] < r2[b] or (r2[a] == r2[b] and a > b)


@njit(cache=True)
def _sift_down(heap: np.ndarray, size: int, pos: int, r2: np.ndarray) -> None:
    x = heap[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _below(r2, heap[child], heap[child + 1]):
            child += 1
        if not _below(r2, x, heap[child]):
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = x


@njit(cache=True)
def _heapify(heap: np.ndarray, size: int, r2: np.ndarray) -> None:
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, pos, r2)


@njit(cache=True, fastmath=_FAST)
def _first_distances(z: np.ndarray, centres: np.ndarray, r2: np.ndarray) -> None:
    for x in range(z.shape[0]):
        r2[x] = _dist2(z, x, centres, 0)


@njit(cache=True, fastmath=_FAST)
def _refresh_top(
    z: np.ndarray,
    centres: np.ndarray,
    m: int,
    r2: np.ndarray,
    last: np.ndarray,
    heap: np.ndarray,
    size: int,
) -> int:
    """Bring the farthest row to the top of the heap with an exact bound; return the number
    of distances measured."""
    measured = 0
    while True:
        x = heap[0]
        if last[x] >= m:
            return measured
        # the next bound: the larger child (the heap's largest key after the top)
        nxt = -1
        if size > 1:
            nxt = heap[1]
            if size > 2 and _below(r2, nxt, heap[2]):
                nxt = heap[2]
        j = last[x]
        while j < m:
            d2 = _dist2(z, x, centres, j)
            j += 1
            if d2 < r2[x]:
                r2[x] = d2
                # below the next bound: cannot be this step's pick; it sees centres j..m
                # when it next reaches the top, so its bound stays an upper bound
                if nxt >= 0 and _below(r2, x, nxt):
                    break
        measured += j - last[x]
        last[x] = j
        if nxt >= 0 and _below(r2, x, nxt):
            _sift_down(heap, size, 0, r2)


@njit(cache=True, fastmath=_FAST)
def _lazy_steps(
    z: np.ndarray,
    centres: np.ndarray,
    selected: np.ndarray,
    m: int,
    m_end: int,
    r2: np.ndarray,
    last: np.ndarray,
    heap: np.ndarray,
    size: int,
    stop_r2: float,
) -> tuple[int, int, int]:
    """Greedy picks ``m .. m_end - 1`` (``m`` centres chosen so far), ending early once the
    farthest row is within ``sqrt(stop_r2)`` of a centre (or no row is left); returns the
    number of centres, the heap's new size and the number of distances measured."""
    measured = 0
    while m < m_end and size > 0:
        measured += _refresh_top(z, centres, m, r2, last, heap, size)
        x = heap[0]
        if r2[x] <= stop_r2:
            break
        selected[m] = x
        centres[m] = z[x]
        m += 1
        size -= 1
        heap[0] = heap[size]
        _sift_down(heap, size, 0, r2)
    return m, size, measured


class _Lazy:
    """The state of one lazy greedy run over ``z (N, d)``: the centres chosen so far (the
    first ``m`` rows of ``centres``), each row's bound ``r2`` and how many centres it has
    seen (``last``), and the heap of the rows not chosen (its first ``size`` entries)."""

    def __init__(self, z: np.ndarray, r2: np.ndarray, capacity: int, first: int | None) -> None:
        self.z = z
        self.r2 = r2
        self.centres = np.empty((capacity, z.shape[1]), dtype=np.float32)
        self.selected = np.empty(capacity, dtype=np.int64)
        rows = np.arange(len(z), dtype=np.int64)
        self.m = 0
        if first is not None:
            self.centres[0], self.selected[0], self.m = z[first], first, 1
            rows = np.delete(rows, first)
        self.last = np.full(len(z), self.m, dtype=np.int64)
        self.heap, self.size = rows, len(rows)
        _heapify(self.heap, self.size, r2)
        self.measured = 0

    def pick(self, m_end: int, stop_r2: float = -1.0) -> bool:
        """Picks up to ``m_end`` centres in all; False when it ended early."""
        self.m, self.size, count = _lazy_steps(
            self.z, self.centres, self.selected, self.m, m_end, self.r2, self.last,
            self.heap, self.size, stop_r2,
        )  # fmt: skip
        self.measured += count
        return self.m == m_end

    def radius(self) -> float:
        """The farthest row's distance to the selection (0 once every row is chosen)."""
        if self.size == 0:
            return 0.0
        self.measured += _refresh_top(
            self.z, self.centres, self.m, self.r2, self.last, self.heap, self.size
        )
        return float(np.sqrt(self.r2[self.heap[0]]))


def _run(
    state: _Lazy,
    k: int,
    progress: Callable[[int, int], None] | None,
    radius: float | None = None,
) -> tuple[np.ndarray, float, int]:
    """``k`` picks in all, ``progress(done, k)`` every ~2 % of them; then, with ``radius``,
    more while some row is farther than that from every centre."""
    step = max(1, k // 50)
    while state.m < k:
        ended = not state.pick(min(k, state.m + step))
        if progress is not None:
            progress(state.m, k)
        if ended:  # no row left (never before k: k <= N)
            break
    if radius is not None:
        state.pick(len(state.selected), radius * radius)
    return state.selected[: state.m], state.radius(), state.measured


def greedy_lazy(
    z: np.ndarray, k: int, start: int, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, float, int]:
    """Exact greedy k-center of ``z (N, d)`` from row ``start``: ``(indices (k,), radius,
    distances measured)``. ``progress(done, k)`` every ~2 % of the steps."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    r2 = np.empty(len(z), dtype=np.float64)
    _first_distances(z, z[start][None], r2)
    state = _Lazy(z, r2, k, start)
    state.measured = len(z)
    if progress is not None and k == 1:  # the only pick is the start
        progress(1, 1)
    return _run(state, k, progress)


def continue_lazy(
    z: np.ndarray,
    nearest2: np.ndarray,
    k: int,
    progress: Callable[[int, int], None] | None = None,
    radius: float | None = None,
) -> tuple[np.ndarray, float, int]:
    """``k`` more greedy picks among ``z (N, d)`` whose rows are at squared distances
    ``nearest2 (N,)`` from the centres chosen before; with ``radius``, then more while
    some row is farther than that from every centre (at most every row). Returns
    ``(indices, radius, distances)``."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    r2 = nearest2.astype(np.float64)  # a copy: updated in place
    state = _Lazy(z, r2, len(z) if radius is not None else k, None)
    return _run(state, k, progress, radius)
