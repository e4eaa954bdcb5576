"""A loaded model's resident size (what the model cache is bounded by), measured from its
arrays and faiss index; the bank read from a flat index is that index's memory, no copy."""

from __future__ import annotations

import gc
from collections.abc import Callable

import faiss
import numpy as np

from engine.footprint import candidates_bytes, knn_bytes, prepare, resident_bytes, shared_rows
from engine.knn import KnnIndex
from engine.patchcore import PatchCoreModel, score


def _rows(n: int = 3000, d: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_the_bank_of_a_flat_index_is_its_own_memory() -> None:
    rows = _rows()
    knn = KnnIndex("exact").fit(rows)
    assert np.array_equal(knn.bank(), rows)
    assert knn_bytes(knn) == rows.nbytes, "one copy of the rows, not two"


def test_the_bank_keeps_its_index_alive() -> None:
    rows = _rows()
    bank = KnnIndex("exact").fit(rows).bank()  # the index object is gone at once
    gc.collect()
    _rows(5000)  # memory freed by then would be reused here
    assert np.array_equal(bank, rows)


def test_an_ivf_index_counts_its_lists_the_exact_copy_and_the_quantizer() -> None:
    rows = _rows()
    knn = KnnIndex("ivf").fit(rows)
    assert knn.kind == "ivf" and np.array_equal(knn.bank(), rows)
    ivf = faiss.downcast_index(knn.cpu_index())
    lists = rows.nbytes + 8 * len(rows)  # vectors and their ids
    assert knn_bytes(knn) == lists + ivf.nlist * rows.shape[1] * 4 + rows.nbytes


def test_shared_rows_only_of_a_filled_flat_index() -> None:
    assert shared_rows(faiss.IndexFlatL2(4)) is None
    assert shared_rows(faiss.IndexHNSWFlat(4, 8)) is None


def test_resident_bytes_are_the_arrays_and_the_index(
    trained_model: Callable[[str], PatchCoreModel],
) -> None:
    model = trained_model("stripes")
    assert model.shortlist is not None
    m, c = model.index.size, model.meta.feature_dim
    cells, k = model.shortlist.shape
    gathered = 4 * (cells * k * c + cells * k + cells)  # rows (P, C, K), norms, their max
    arrays = sum(
        a.nbytes for a in (model.baseline, model.shortlist, model.held_out) if a is not None
    )
    assert candidates_bytes(model) == gathered
    predicted = resident_bytes(model)
    assert predicted == m * c * 4 + gathered + arrays + sum(
        a.nbytes for a in model._baseline_maps.values()
    )
    prepare(model)  # what a first score builds: counted before it is built
    assert model._candidates is not None and candidates_bytes(model) == gathered


def test_scores_are_the_same_bits_as_from_a_copied_bank(
    trained_model: Callable[[str], PatchCoreModel],
) -> None:
    model = trained_model("checker")
    h, w = model.meta.grid
    rng = np.random.default_rng(1)
    bank = model.index.bank()
    feats = bank[rng.integers(0, len(bank), (3, h * w))].reshape(3, h, w, -1)
    feats = feats + rng.normal(0, 0.05, feats.shape).astype(np.float32)
    shared = score(model, feats)
    copied_index = KnnIndex("exact").fit(bank.copy())
    copied_index._bank = bank.copy()  # a bank as it was read before: a copy of the rows
    copied = PatchCoreModel(
        meta=model.meta, index=copied_index, baseline=model.baseline, shortlist=model.shortlist
    )
    again = score(copied, feats)
    assert np.array_equal(shared.image, again.image)
    assert np.array_equal(shared.patches, again.patches)
