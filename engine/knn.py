"""Nearest-neighbour search over a memory bank, behind ``fit / search / save / load``.

faiss is hidden here. The bank always sits in a CPU faiss index (rows read back, saved);
with ``use_gpu`` every search goes to an accelerator instead (:mod:`engine.device_knn`:
faiss-gpu, or torch where faiss-gpu is absent), always exactly.

Modes:
- ``exact``: brute-force L2 (``IndexFlatL2``); on an accelerator always this one.
- ``ivf``: inverted lists (``IndexIVFFlat``) on the CPU. An IVF search can miss the true
  nearest neighbour but never returns a distance *below* it, so it can only raise a score.
  :meth:`KnnIndex.search_images` then re-scores exactly the patches that decide each
  image's score (see there), so the image score is exact in both modes.

Cheaper upper bounds known beforehand (PatchCore's positional shortlist) let
:meth:`KnnIndex.search_images` skip the index for every patch that cannot decide the
image score: only contenders are searched, approximately first, then exactly.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from engine.device_knn import DeviceBackend, DeviceSearch, device_backend, device_search
from engine.footprint import shared_rows
from engine.knn_prune import Projection

if TYPE_CHECKING:
    from configs.settings import KnnMode  # the accepted values of BDI_KNN_MODE

# Exact searches of a few patches at a time are the common case (re-checking the patches
# that decide an image's score): faiss answers fewer than 20 queries with a per-query loop
# unless told to use its matrix product. Its own BLAS also shares faiss' OpenMP pool, where
# numpy's would spin up a second pool that competes with faiss' for the cores.
faiss.cvar.distance_compute_blas_threshold = 1
# IVF needs enough points per list to be worth it; below this the flat index is used.
MIN_IVF_BANK = 2048
# patches per image searched first: with the approximate index (from a shortlist bound),
# then exactly; the rest only when they might still beat the best exact one. A wider first
# round finds a high exact score sooner, and every patch bounded below it is never searched
# (measured, patches per image reaching the index / search ms per image at 16 and 48:
# tire 155 / 0.89 and 57 / 0.51; metal_plate 47 / 0.28 and 54 / 0.26)
SEED_APPROX = 48
SEED_EXACT = 2
# Exact searches given an upper bound skip the bank rows a cheap lower bound rules out
# (engine.knn_prune), on large banks only (measured on tire, 16,464 rows: 52 of them left
# per query, against 524 of metal_plate's 4,233).
PRUNE_MIN_BANK = 8192
_BOUND, _APPROX, _EXACT = 0, 1, 2  # what a patch distance currently is


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """``(B, P)`` mask of each row's ``k`` largest values."""
    k = min(k, values.shape[1])
    idx = np.argpartition(-values, k - 1, axis=1)[:, :k]
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


class KnnIndex:
    """L2 nearest neighbours of query rows ``(Q, C)`` in a memory bank ``(M, C)``."""

    def __init__(self, mode: KnnMode = "exact", nprobe: int = 4, use_gpu: bool = False) -> None:
        self.mode: KnnMode = mode
        self.nprobe = nprobe
        self.use_gpu = use_gpu and device_backend() is not None
        self._index: faiss.Index | None = None
        self._flat: faiss.Index | None = None  # exact index used for refinement
        self._device: DeviceSearch | None = None  # every search, with use_gpu
        self._bank: np.ndarray | None = None  # the rows, read out of the index once
        self._pruner: Projection | None = None  # lower bounds for exact searches

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """How searches run: "ivf" (approximate first) or "exact"."""
        if self._device is None and isinstance(self._index, faiss.IndexIVF):
            return "ivf"
        return "exact"

    @property
    def backend(self) -> DeviceBackend | Literal["faiss-cpu"]:
        """What answers the searches: "faiss-cpu", or the accelerator's "faiss-gpu" or
        "torch"."""
        if not self.use_gpu:
            return "faiss-cpu"
        backend = device_backend()
        assert backend is not None  # use_gpu is only kept where one exists
        return backend

    def fit(self, bank: np.ndarray) -> KnnIndex:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        m, dim = bank.shape
        if self.mode == "ivf" and not self.use_gpu and m >= MIN_IVF_BANK:
            # >= 32 training points per list keeps faiss k-means well posed
            nlist = max(16, min(int(4 * math.sqrt(m)), m // 32))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            index.cp.seed = 1234
            index.cp.min_points_per_centroid = 16  # nlist is sized for >= 32 per list
            index.train(bank)
            index.add(bank)
            self._index = index
        else:
            flat = faiss.IndexFlatL2(dim)
            flat.add(bank)
            self._index = flat
        self._configure()
        return self

    def add(self, rows: np.ndarray) -> KnnIndex:
        """A new index: this bank and ``rows (R, C)`` after it (ids go on from ``size``).

        Only what the rows change is rebuilt: an IVF index keeps its trained lists and files
        the rows into them (no new k-means), a flat one appends them. This index is left as
        it is (a model being scored keeps using it)."""
        index = faiss.clone_index(self._require())
        index.add(np.ascontiguousarray(rows, dtype=np.float32))
        knn = KnnIndex(self.mode, nprobe=self.nprobe, use_gpu=self.use_gpu)
        knn._index = index
        knn._configure()
        return knn

    def _configure(self) -> None:
        index = self._index
        assert index is not None
        # the bank is the exact index's own rows, not a copy of them (read once: scoring
        # needs the rows, and reading IVF lists back is a loop over every list)
        self._flat = index
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = min(self.nprobe, index.nlist)
            self._flat = faiss.IndexFlatL2(index.d)
            self._flat.add(_read_rows(index))
        shared = shared_rows(self._flat)
        self._bank = shared if shared is not None else _read_rows(self._flat)
        if self.use_gpu:
            self._device = device_search(self._bank, self._flat)
        self._pruner = (
            Projection(self._bank)
            if not self.use_gpu and len(self._bank) >= PRUNE_MIN_BANK
            else None
        )

    def bank(self) -> np.ndarray:
        """The memory bank ``(M, C)`` as stored in the index."""
        if self._bank is None:
            raise RuntimeError("index is empty: call fit() or load() first")
        return self._bank

    def _require(self) -> faiss.Index:
        if self._index is None:
            raise RuntimeError("index is empty: call fit() or load() first")
        return self._index

    def search(
        self, queries: np.ndarray, k: int = 1, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances (L2, not squared) and ids ``(Q, k)`` of the nearest bank rows."""
        index = self._flat if exact else self._require()
        assert index is not None
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._device is not None:
            d2, ids = self._device.search(queries, k)
        else:
            d2, ids = index.search(queries, k)
        # an IVF probe that reached no list answers -1 / +inf: never a low score
        d2 = np.where(ids < 0, np.inf, d2)
        return np.sqrt(np.maximum(d2, 0.0)), ids

    def exact(self, queries: np.ndarray, upper: np.ndarray | None = None) -> np.ndarray:
        """Exact nearest-neighbour distance of each query row ``(Q, C) -> (Q,)``.

        The neighbour comes from a matrix product (``|q|² - 2 q·m + |m|²``), whose float32
        rounding grows with the norms; the distance to it is then taken directly, so a
        score does not depend on which other queries shared the product.

        ``upper (Q,)``: distances known to be at least the nearest one (a bound, an
        approximate search). On a large bank only the rows that a cheap lower bound cannot
        rule out are then measured (see :class:`engine.knn_prune.Projection`); the answer
        is the same.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        ids = None
        if upper is not None and self._pruner is not None and len(q):
            ids = self._pruner.nearest(q, upper)
        if ids is None:
            ids = self.search(q, exact=True)[1][:, 0]
        return np.linalg.norm(q - self.bank()[ids], axis=1)

    def search_images(
        self,
        queries: np.ndarray,
        baseline: np.ndarray | None = None,
        upper: np.ndarray | None = None,
        searched: np.ndarray | None = None,
        exact: np.ndarray | None = None,
    ) -> np.ndarray:
        """Nearest-neighbour distance bounds of every patch, ``(B, P, C) -> (B, P)``, exact
        where they decide each image's score ``max(distance - baseline)``.

        ``baseline (P,)``: the per-position OK baseline (none: zero).

        Every value returned is an upper bound of the true distance (an IVF probe or a
        shortlist can only miss the nearest row, never find one closer than it), and the
        patches that could hold each image's maximum are searched exactly, so the image
        score is exact; the rest of the map can only err upward, towards NG.

        ``upper (B, P)``: cheap upper bounds known beforehand (a positional shortlist).
        Then only the patches that may beat the running maximum are searched at all: first
        with the approximate index, then exactly.

        ``searched (B, P) bool``, when given, is set where a patch went through the index
        (or the exact search): searching those again with the index changes nothing.
        ``exact (B, P) bool``, when given, is set where a patch distance is exact.
        """
        b, p, c = queries.shape
        baseline = np.zeros(p, np.float32) if baseline is None else baseline.astype(np.float32)
        if upper is None:
            if searched is not None:
                searched[...] = True
            if self.kind == "exact":
                if exact is not None:
                    exact[...] = True
                return self.exact(queries.reshape(-1, c)).reshape(b, p)
            dist = self.search(queries.reshape(-1, c))[0][:, 0].reshape(b, p)
            level = np.full((b, p), _APPROX, np.int8)
        else:
            dist = np.array(upper, dtype=np.float32)
            level = np.full((b, p), _BOUND, np.int8)
            # each image's likeliest maxima get the approximate index first
            self._raise(queries, dist, level, _top(dist - baseline, SEED_APPROX), _APPROX)
        self._raise(queries, dist, level, _top(dist - baseline, SEED_EXACT), _EXACT)
        while True:
            judged = dist - baseline
            best = np.where(level == _EXACT, judged, -np.inf).max(axis=1, keepdims=True)
            above = (judged > best) & (level != _EXACT)
            if not above.any():
                if searched is not None:
                    searched[...] = level != _BOUND
                if exact is not None:  # a flat index answers every search exactly
                    exact[...] = level >= (_APPROX if self.kind == "exact" else _EXACT)
                return dist
            if (above & (level == _BOUND)).any():
                # cheap first: every contender still on a shortlist bound gets the index
                self._raise(queries, dist, level, above & (level == _BOUND), _APPROX)
            else:
                # then exactly, highest first, a few per image, as the best rises
                contenders = np.where(above, judged, -np.inf)
                self._raise(queries, dist, level, above & _top(contenders, SEED_EXACT), _EXACT)

    def _raise(
        self,
        queries: np.ndarray,
        dist: np.ndarray,
        level: np.ndarray,
        where: np.ndarray,
        to: int,
    ) -> None:
        """Search the patches ``where (B, P) bool`` again at level ``to`` (in place)."""
        where = where & (level < to)
        if to == _EXACT or self.kind == "exact":
            if where.any():
                dist[where] = self.exact(queries[where], dist[where])
            level[where] = _EXACT
        else:
            self.settle(queries, dist, where)
            level[where] = _APPROX

    def settle(
        self, queries: np.ndarray, dist: np.ndarray, where: np.ndarray, exact: bool = False
    ) -> np.ndarray:
        """Search the patches ``where (B, P) bool`` with the index (exactly for a flat one,
        or with ``exact``) and keep the tighter of that and the bound they had.

        ``dist`` must hold upper bounds of the distances there (a shortlist's, an IVF
        probe's): an exact search uses them to rule bank rows out."""
        if not where.any():
            return dist
        q = queries[where]
        if exact:
            dist[where] = self.exact(q, dist[where])
        elif self.kind == "exact":
            dist[where] = self.exact(q)
        else:
            dist[where] = np.minimum(dist[where], self.search(q)[0][:, 0])
        return dist

    def cpu_index(self) -> faiss.Index:
        """The faiss index holding the bank on the host (what is saved)."""
        return self._require()

    def save(self, path: Path) -> None:
        faiss.write_index(self._require(), str(path))

    @classmethod
    def read(cls, path: Path, nprobe: int = 8) -> KnnIndex:
        """A saved index, on the host. A damaged file raises RuntimeError (faiss) or
        TypeError (an index kind this class does not hold)."""
        index = faiss.read_index(str(path))
        mode: KnnMode = "ivf" if isinstance(index, faiss.IndexIVF) else "exact"
        knn = cls(mode=mode, nprobe=nprobe)
        knn._index = index
        knn._configure()
        return knn

    def to_device(self) -> KnnIndex:
        """The same index searched on the accelerator, where one exists (else itself).
        Failures there are :class:`engine.errors.DeviceError`, never a damaged file's."""
        if self.use_gpu or device_backend() is None:
            return self
        assert self._flat is not None
        knn = copy.copy(self)
        knn.use_gpu, knn._pruner = True, None  # pruning is a CPU aid
        knn._device = device_search(self.bank(), self._flat)
        return knn

    @classmethod
    def load(cls, path: Path, nprobe: int = 8, use_gpu: bool = False) -> KnnIndex:
        knn = cls.read(path, nprobe)
        return knn.to_device() if use_gpu else knn


def _read_rows(index: faiss.Index) -> np.ndarray:
    """Every stored vector of a CPU flat or IVF-flat index, in id order."""
    if isinstance(index, faiss.IndexIVF):
        inv = index.invlists
        assert inv is not None
        rows = np.empty((index.ntotal, index.d), dtype=np.float32)
        for lst in range(index.nlist):
            n = inv.list_size(lst)
            if n:
                ids = faiss.rev_swig_ptr(inv.get_ids(lst), n).copy()
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * index.d * 4)
                rows[ids] = np.frombuffer(codes.copy(), dtype=np.float32).reshape(n, -1)
        return rows
    if hasattr(index, "reconstruct_n"):
        return index.reconstruct_n(0, index.ntotal)
    raise TypeError(f"cannot read the bank of {type(index).__name__}")
