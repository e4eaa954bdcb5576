"""kNN index: exact search, IVF with exact image scores, save/load, bank read-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.knn import MIN_IVF_BANK, PRUNE_MIN_BANK, KnnIndex
from engine.knn_prune import PRUNE_MAX_QUERIES


def _brute_force(bank: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``(Q, M)`` L2 distances in float64."""
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    return np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))


@pytest.fixture(scope="module")
def big_bank() -> np.ndarray:
    bank = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    assert len(bank) >= MIN_IVF_BANK
    return bank


@pytest.fixture(scope="module")
def image_queries() -> np.ndarray:
    """``(B, P, C)``: 6 images of 64 patches, the last two shifted away from the bank."""
    q = np.random.default_rng(1).standard_normal((6, 64, 32)).astype(np.float32)
    q[4:] += 1.5
    return q


@pytest.fixture(scope="module")
def ivf(big_bank: np.ndarray) -> KnnIndex:
    index = KnnIndex("ivf", nprobe=2).fit(big_bank)
    assert index.kind == "ivf"
    return index


@pytest.fixture(scope="module")
def exact(big_bank: np.ndarray) -> KnnIndex:
    return KnnIndex("exact").fit(big_bank)


def test_exact_search_equals_brute_force() -> None:
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    index = KnnIndex("exact").fit(bank)
    dist, ids = index.search(queries, k=3)

    ref = _brute_force(bank, queries)
    ref_ids = np.argsort(ref, axis=1)[:, :3]
    assert dist.shape == ids.shape == (40, 3)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, ref_ids, 1), rtol=1e-4, atol=1e-4)
    assert index.size == 500
    assert index.kind == "exact"


def test_exact_search_images_is_the_nearest_distance_per_patch() -> None:
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((300, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 10, 8)).astype(np.float32)
    dist = KnnIndex("exact").fit(bank).search_images(queries)
    ref = _brute_force(bank, queries.reshape(-1, 8)).min(1).reshape(3, 10)
    assert dist.shape == (3, 10)
    np.testing.assert_allclose(dist, ref, rtol=1e-4, atol=1e-4)


def test_a_bank_member_is_its_own_neighbour() -> None:
    bank = np.random.default_rng(4).standard_normal((100, 8)).astype(np.float32)
    dist, ids = KnnIndex("exact").fit(bank).search(bank[[5, 50]], k=1)
    np.testing.assert_array_equal(ids[:, 0], [5, 50])
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-3)


def test_small_bank_falls_back_to_exact() -> None:
    bank = np.random.default_rng(5).standard_normal((MIN_IVF_BANK - 1, 8)).astype(np.float32)
    assert KnnIndex("ivf").fit(bank).kind == "exact"


def test_ivf_is_approximate_on_this_data(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    """Guard for the tests below: the raw IVF search really misses some neighbours."""
    flat = image_queries.reshape(-1, 32)
    approx = ivf.search(flat)[0][:, 0]
    true = exact.search(flat)[0][:, 0]
    assert (approx > true).mean() > 0.05


def test_ivf_image_max_is_exact(ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray) -> None:
    approx = ivf.search_images(image_queries)
    true = exact.search_images(image_queries)
    assert approx.shape == true.shape == (6, 64)
    np.testing.assert_array_equal(approx.max(axis=1), true.max(axis=1))
    np.testing.assert_array_equal(approx.argmax(axis=1), true.argmax(axis=1))


def test_ivf_never_underestimates(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    approx = ivf.search_images(image_queries)
    true = exact.search_images(image_queries)
    assert np.isfinite(approx).all()
    # up to float32 rounding (distances are summed in different orders)
    assert (approx >= true * (1 - 1e-6)).all(), float((approx - true).min())


def test_ivf_raw_search_never_underestimates(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    flat = image_queries.reshape(-1, 32)
    approx = ivf.search(flat, k=1)[0][:, 0]
    true = exact.search(flat, k=1)[0][:, 0]
    assert (approx >= true * (1 - 1e-6)).all()


def test_ivf_exact_flag_searches_exactly(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    flat = image_queries.reshape(-1, 32)
    np.testing.assert_array_equal(ivf.search(flat, exact=True)[1], exact.search(flat)[1])


@pytest.mark.parametrize("mode", ["exact", "ivf"])
def test_bank_returns_the_fitted_rows(mode: str, big_bank: np.ndarray) -> None:
    index = KnnIndex(mode).fit(big_bank)
    assert index.kind == mode
    bank = index.bank()
    assert bank.dtype == np.float32
    np.testing.assert_array_equal(bank, big_bank)


@pytest.mark.parametrize("mode", ["exact", "ivf"])
def test_save_load_round_trip(
    mode: str, big_bank: np.ndarray, image_queries: np.ndarray, tmp_path: Path
) -> None:
    index = KnnIndex(mode, nprobe=2).fit(big_bank)
    path = tmp_path / "bank.faiss"
    index.save(path)
    loaded = KnnIndex.load(path, nprobe=2)

    assert loaded.kind == index.kind == mode
    assert loaded.size == index.size == len(big_bank)
    np.testing.assert_array_equal(loaded.bank(), big_bank)
    np.testing.assert_array_equal(
        loaded.search_images(image_queries), index.search_images(image_queries)
    )
    d0, i0 = index.search(image_queries[0], k=4)
    d1, i1 = loaded.search(image_queries[0], k=4)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)


def test_unfitted_index_refuses_to_search() -> None:
    index = KnnIndex("exact")
    assert index.size == 0
    with pytest.raises(RuntimeError):
        index.search(np.zeros((1, 4), np.float32))


def test_upper_bounds_search_only_what_decides_and_keep_the_max_exact(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    true = exact.search_images(image_queries)
    rng = np.random.default_rng(7)
    # bounds as a positional shortlist gives them: some exact, some loose
    loose = rng.random(true.shape) < 0.4
    upper = np.where(loose, true * (1 + rng.random(true.shape)), true).astype(np.float32)
    baseline = rng.random(true.shape[1]).astype(np.float32)
    got = ivf.search_images(image_queries, baseline, upper)
    assert (got >= true * (1 - 1e-6)).all()
    assert (got <= upper).all()  # never worse than the bound it started from
    np.testing.assert_allclose((got - baseline).max(1), (true - baseline).max(1), rtol=1e-6)
    assert ((got - baseline).argmax(1) == (true - baseline).argmax(1)).all()
    # most patches were never searched: they keep their bound
    assert (got == upper).mean() > 0.5


def test_settle_brings_chosen_images_to_index_quality(
    ivf: KnnIndex, exact: KnnIndex, image_queries: np.ndarray
) -> None:
    true = exact.search_images(image_queries)
    upper = (true * 3).astype(np.float32)
    chosen = np.zeros(true.shape, dtype=bool)
    chosen[[1, 4]] = True
    settled = ivf.settle(image_queries, upper.copy(), chosen)
    raw = ivf.search(image_queries.reshape(-1, 32))[0][:, 0].reshape(true.shape)
    np.testing.assert_array_equal(settled[[1, 4]], raw[[1, 4]])
    np.testing.assert_array_equal(settled[[0, 2, 3, 5]], upper[[0, 2, 3, 5]])


def test_exact_distances_do_not_depend_on_the_batch(exact: KnnIndex, big_bank: np.ndarray) -> None:
    q = np.random.default_rng(3).standard_normal((40, 32)).astype(np.float32) * 50
    together = exact.exact(q)
    alone = np.array([exact.exact(q[i : i + 1])[0] for i in range(len(q))])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_allclose(together, _brute_force(big_bank, q).min(1), rtol=1e-6)


@pytest.fixture(scope="module")
def low_rank_bank() -> np.ndarray:
    """A bank large enough for pruned exact searches, varying mostly along few directions
    (as patch features do) with a little noise in every other one."""
    rng = np.random.default_rng(5)
    directions = rng.standard_normal((24, 64))
    rows = rng.standard_normal((PRUNE_MIN_BANK + 500, 24)) @ directions
    return (rows + 0.3 * rng.standard_normal(rows.shape[:1] + (64,))).astype(np.float32)


def test_pruned_exact_search_finds_the_nearest_row_even_at_a_tight_bound(
    low_rank_bank: np.ndarray,
) -> None:
    """Given upper bounds, only rows a principal-direction lower bound cannot rule out are
    measured; the nearest row is never ruled out, even when the bound is the nearest
    distance itself (the tightest an upper bound can be)."""
    index = KnnIndex("exact").fit(low_rank_bank)
    assert index._pruner is not None
    rng = np.random.default_rng(6)
    queries = low_rank_bank[rng.choice(len(low_rank_bank), 40)] + rng.standard_normal(
        (40, 64)
    ).astype(np.float32)
    true = _brute_force(low_rank_bank, queries).min(1)
    plain = index.exact(queries)
    np.testing.assert_allclose(plain, true, rtol=1e-5)
    step = PRUNE_MAX_QUERIES  # the pruner takes a few queries at a time
    for slack in (1.0, 1.05, 2.0):
        bound = (plain * slack).astype(np.float32)
        got = [index.exact(queries[i : i + step], bound[i : i + step]) for i in range(0, 40, step)]
        np.testing.assert_array_equal(np.concatenate(got), plain)
    assert index._pruner.nearest(queries[:step], plain[:step]) is not None  # pruned, above
    # a query far from everything keeps every row: the plain product answers it
    far = np.full((1, 64), 1e3, np.float32)
    np.testing.assert_allclose(index.exact(far, np.array([np.inf])), index.exact(far), rtol=1e-6)


def test_pruning_rules_out_most_rows_and_falls_back_when_it_cannot(
    low_rank_bank: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = KnnIndex("exact").fit(low_rank_bank)
    pruner = index._pruner
    assert pruner is not None
    n = PRUNE_MAX_QUERIES
    queries = low_rank_bank[:n] + 0.1
    bound = index.exact(queries) * 1.01
    measured: list[int] = []
    einsum = np.einsum

    def counting(spec: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        measured.append(len(a))
        return einsum(spec, a, b)

    monkeypatch.setattr(np, "einsum", counting)
    assert pruner.nearest(queries, bound) is not None
    assert n <= measured[-1] < 0.05 * n * len(low_rank_bank)
    # no useful bound (infinite, or NaN from a broken frame): the caller's plain product
    assert pruner.nearest(queries, np.full(n, np.inf, np.float32)) is None
    assert pruner.nearest(queries, np.full(n, np.nan, np.float32)) is None
    # more queries than a few: one matrix product over the bank is cheaper, whatever the
    # bounds, and the answer is the same
    many = low_rank_bank[: n + 1] + 0.1
    tight = index.exact(many)
    assert pruner.nearest(many, tight) is None
    np.testing.assert_array_equal(index.exact(many, tight), tight)


def test_small_banks_are_not_pruned(big_bank: np.ndarray) -> None:
    assert len(big_bank) < PRUNE_MIN_BANK
    assert KnnIndex("exact").fit(big_bank)._pruner is None


def test_image_scores_stay_exact_when_their_exact_searches_are_pruned(
    low_rank_bank: np.ndarray,
) -> None:
    ivf = KnnIndex("ivf", nprobe=1).fit(low_rank_bank)
    assert ivf.kind == "ivf" and ivf._pruner is not None
    rng = np.random.default_rng(8)
    picks = rng.choice(len(low_rank_bank), (4, 32))
    queries = low_rank_bank[picks] + rng.standard_normal((4, 32, 64)).astype(np.float32)
    true = _brute_force(low_rank_bank, queries.reshape(-1, 64)).min(1).reshape(4, 32)
    upper = (true * (1 + rng.random(true.shape))).astype(np.float32)
    got = ivf.search_images(queries, None, upper)
    np.testing.assert_allclose(got.max(1), true.max(1), rtol=1e-5)
    assert (got >= true * (1 - 1e-5)).all()
