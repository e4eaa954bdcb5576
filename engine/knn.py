"""Nearest-neighbour search over a memory bank, behind ``fit / search / save / load``.

faiss is hidden here; GPU vs CPU is chosen in :func:`_to_device` only.

Modes:
- ``exact``: brute-force L2 (``IndexFlatL2``); on CUDA always this one.
- ``ivf``: inverted lists (``IndexIVFFlat``) on the CPU. An IVF search can miss the true
  nearest neighbour but never returns a distance *below* it, so it can only raise a score.
  :meth:`KnnIndex.search_images` then re-scores exactly the patches that decide each
  image's score (see there), so the image score is exact in both modes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

KnnMode = Literal["exact", "ivf"]
# IVF needs enough points per list to be worth it; below this the flat index is used.
MIN_IVF_BANK = 2048
REFINE_TOP = 8


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class KnnIndex:
    """L2 nearest neighbours of query rows ``(Q, C)`` in a memory bank ``(M, C)``."""

    def __init__(self, mode: KnnMode = "exact", nprobe: int = 4, use_gpu: bool = False) -> None:
        self.mode: KnnMode = mode
        self.nprobe = nprobe
        self.use_gpu = use_gpu and _gpu_available()
        self._index: faiss.Index | None = None
        self._flat: faiss.Index | None = None  # exact index used for refinement
        self._bank: np.ndarray | None = None  # the rows, read out of the index once

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "exact"

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

    def _configure(self) -> None:
        index = self._index
        assert index is not None
        # read while the index is still on the host; scoring (reweighting) and saving
        # need the rows, and reading IVF lists back is a loop over every list
        self._bank = _read_rows(index)
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = min(self.nprobe, index.nlist)
            self._flat = faiss.IndexFlatL2(index.d)
            self._flat.add(self._bank)
        else:
            self._flat = index
        if self.use_gpu:
            self._index = self._flat = _to_device(self._flat)

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
        d2, ids = index.search(queries, k)
        # an IVF probe that reached no list answers -1 / +inf: never a low score
        d2 = np.where(ids < 0, np.inf, d2)
        return np.sqrt(np.maximum(d2, 0.0)), ids

    def search_images(self, queries: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """Nearest-neighbour distance of every patch, ``(B, P, C) -> (B, P)``.

        With an approximate index, each image's top patches are searched again exactly,
        widening until the best exact distance beats every patch left approximate. Since an
        approximate distance never underestimates, this makes the max (the image score)
        exact; the rest of the map can only err upward, towards NG. ``offset (P,)``: the
        image score is ``max(distance - offset)``; "top" is ranked by that.
        """
        b, p, c = queries.shape
        dist = self.search(queries.reshape(-1, c))[0][:, 0].reshape(b, p)
        if self.kind == "exact":
            return dist
        adj = np.zeros(p, dtype=dist.dtype) if offset is None else offset.astype(dist.dtype)
        exact = np.zeros((b, p), dtype=bool)
        todo = np.arange(b)
        top = min(REFINE_TOP, p)
        while todo.size:
            order = np.argsort(adj - dist[todo], axis=1)[:, :top]  # (T, top) patch ids
            rows = np.repeat(todo, order.shape[1])
            cols = order.ravel()
            fresh = ~exact[rows, cols]
            if fresh.any():
                q = queries[rows[fresh], cols[fresh]]
                dist[rows[fresh], cols[fresh]] = self.search(q, exact=True)[0][:, 0]
                exact[rows[fresh], cols[fresh]] = True
            best_exact = np.where(exact[todo], dist[todo] - adj, -np.inf).max(1)
            best_approx = np.where(exact[todo], -np.inf, dist[todo] - adj).max(1)
            todo = todo[best_approx > best_exact]
            top = min(top * 2, p)
        return dist

    def save(self, path: Path) -> None:
        index = self._require()
        if self.use_gpu:
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 8, use_gpu: bool = False) -> KnnIndex:
        index = faiss.read_index(str(path))
        mode: KnnMode = "ivf" if isinstance(index, faiss.IndexIVF) else "exact"
        knn = cls(mode=mode, nprobe=nprobe, use_gpu=use_gpu)
        knn._index = index
        knn._configure()
        return knn


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


def _to_device(index: faiss.Index) -> faiss.Index:
    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu.referenced_resources = resources  # type: ignore[attr-defined]  # keep the resources alive with the index
    return gpu
