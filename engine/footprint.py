"""What a loaded model holds in host memory, measured from its arrays and its faiss index.

The per-worker model cache is bounded by these bytes (``BDI_CACHE_MAX_MB``,
:mod:`store.cache`). Counted: the faiss index's vectors (and an IVF index's ids and
coarse quantizer), the bank rows read out of it, the exact index an IVF one keeps for
refinement, the pruning projection of a large bank, the baseline, the shortlist and the
shortlist's rows as scoring gathers them (:meth:`PatchCoreModel.shortlist_bounds`; counted
before the first score builds them, since every scored model does), the held-out flags
and the cached baseline maps. Not counted: Python objects of a few hundred bytes, and an
accelerator's copy of the bank (device memory, not the host's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

if TYPE_CHECKING:
    from engine.knn import KnnIndex
    from engine.patchcore import PatchCoreModel

_ID_BYTES = 8  # faiss.idx_t of each vector in an inverted list


class _IndexRows:
    """The vectors of a flat faiss index, exposed to numpy over the index's own memory; an
    array made from it keeps the index (and so that memory) alive."""

    def __init__(self, index: faiss.IndexFlat) -> None:
        n, d = int(index.ntotal), int(index.d)
        view = faiss.rev_swig_ptr(index.get_xb(), n * d)
        self.index = index
        self.__array_interface__ = {
            "shape": (n, d),
            "typestr": "<f4",
            "data": (view.__array_interface__["data"][0], False),
            "version": 3,
        }


def shared_rows(index: faiss.Index) -> np.ndarray | None:
    """The rows ``(N, d)`` float32 of a flat faiss index without a copy (the same bits the
    searches use; not to be written), or None for other kinds and an empty index."""
    if not isinstance(index, faiss.IndexFlat) or index.ntotal == 0:
        return None
    return np.asarray(_IndexRows(index))


def faiss_index_bytes(index: faiss.Index) -> int:
    """Bytes of a CPU flat or IVF-flat index's vectors (and lists' ids, and quantizer)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        quantizer = index_bytes_or_zero(index.quantizer)
        return int(index.ntotal) * (int(index.code_size) + _ID_BYTES) + quantizer
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal) * int(index.code_size)
    return int(index.ntotal) * int(index.d) * 4  # other kinds: float32 vectors at least


def index_bytes_or_zero(index: faiss.Index | None) -> int:
    return 0 if index is None else faiss_index_bytes(index)


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.element_size() * t.nelement()


def _owned(array: np.ndarray | None) -> int:
    """An array's bytes, unless it is a view of memory counted elsewhere."""
    if array is None:
        return 0
    return int(array.nbytes) if array.base is None or array.flags.owndata else 0


def knn_bytes(knn: KnnIndex) -> int:
    """Host bytes of a :class:`~engine.knn.KnnIndex`."""
    index, flat = knn._index, knn._flat
    total = index_bytes_or_zero(index)
    if flat is not None and flat is not index:
        total += faiss_index_bytes(flat)
    total += _owned(knn._bank)
    pruner = knn._pruner
    if pruner is not None:
        total += sum(
            _tensor_bytes(t) for t in (pruner.mean, pruner.basis, pruner.proj_t, pruner.row_term)
        )
    return total


def candidates_bytes(model: PatchCoreModel) -> int:
    """The shortlist's gathered rows ``(P, C, K)`` float32, their squared norms ``(P, K)``
    and each position's largest ``(P,)``, built or to be built by the first score."""
    if model._candidates is not None:
        rows, norms, largest = model._candidates
        return _tensor_bytes(rows) + _tensor_bytes(norms) + _tensor_bytes(largest)
    if model.shortlist is None or model.shortlist.shape[1] == 0 or model.index.use_gpu:
        return 0  # an accelerator's exact search needs no bounds (engine.patchcore.score)
    cells, k = model.shortlist.shape
    return 4 * (cells * k * model.meta.feature_dim + cells * k + cells)


def resident_bytes(model: PatchCoreModel) -> int:
    """Host bytes ``model`` holds once it has scored (see the module's docstring)."""
    arrays = (model.baseline, model.shortlist, model.held_out, *model._baseline_maps.values())
    return knn_bytes(model.index) + candidates_bytes(model) + sum(_owned(a) for a in arrays)


def prepare(model: PatchCoreModel) -> None:
    """Build what the first score of ``model`` would (its shortlist's rows), so that the
    first frames do not pay for it and its size is what :func:`resident_bytes` counts."""
    if model.shortlist is not None and not model.index.use_gpu:
        h, w = model.meta.grid
        model.shortlist_bounds(np.zeros((0, h * w, model.meta.feature_dim), np.float32))
