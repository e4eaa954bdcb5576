"""Greedy k-center coreset: the CPU paths (lazy, pruned) against the exact dense rule."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import engine.coreset as coreset_module
from engine.coreset import (
    _continue_pruned,
    _greedy_dense,
    _greedy_pruned,
    continue_coreset,
    coverage_radius,
    greedy_coreset,
    random_projection,
)
from engine.coreset_lazy import continue_lazy, greedy_lazy

N, D, K, PROJ = 3000, 256, 300, 128


def _gaussian(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((N, D)).astype(np.float32))


def _clustered(seed: int) -> torch.Tensor:
    """20 tight clusters far apart: many near-equal distances, the hard case for pruning."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, D)) * 5.0
    x = centres[rng.integers(0, 20, N)] + rng.standard_normal((N, D)) * 0.3
    return torch.from_numpy(x.astype(np.float32))


DATA = {"gaussian": _gaussian, "clustered": _clustered}


def _exact_greedy(z: torch.Tensor, k: int, start: int) -> tuple[np.ndarray, float]:
    """The dense rule in float64: exact greedy k-center free of float32 near-ties.

    (In float32 the dense rule's ``|a|² + |b|² - 2ab`` loses ~1e-5 relative on the
    clustered data, enough to flip genuine near-ties; the pruned path measures
    ``|a - b|`` directly and agrees with the float64 rule.)
    """
    idx, radius = _greedy_dense(z.double(), k, start)
    return idx.numpy(), float(radius)


def _greedy_gaps(z: torch.Tensor, idx: torch.Tensor) -> list[float]:
    """For each step after the first, how far (relative, in float64) the picked point is
    from the farthest point at that step: 0 for an exact greedy pick."""
    z = z.double()
    nearest = (z - z[idx[0]]).norm(dim=1)
    gaps = []
    for i in idx[1:].tolist():
        farthest = float(nearest.max())
        gaps.append((farthest - float(nearest[i])) / farthest)
        nearest = torch.minimum(nearest, (z - z[i]).norm(dim=1))
    return gaps


@pytest.mark.parametrize("kind", sorted(DATA))
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_selection_equals_dense_rule(kind: str, seed: int) -> None:
    """Every pick is the farthest point of its step by the float64 rule; on well-spread
    data the whole sequence equals it. On the clustered data genuine near-ties (float64
    gaps of ~1e-5 relative) fall either way with the CPU's float32 kernels (seen on an AMD
    EPYC), so there each pick must be farthest within float32 rounding."""
    features = DATA[kind](seed)
    coreset = greedy_coreset(features, K, projection_dim=PROJ, seed=seed)
    z = random_projection(features, PROJ, seed)
    start = int(coreset.indices[0])

    ref_idx, _ = _exact_greedy(z, K, start)

    assert coreset.indices.dtype == torch.int64
    assert coreset.indices.shape == (K,)
    assert len(set(coreset.indices.tolist())) == K  # no point picked twice
    assert max(_greedy_gaps(z, coreset.indices)) < 5e-5
    if kind == "gaussian":
        np.testing.assert_array_equal(coreset.indices.numpy(), ref_idx)
    else:  # near-ties swap neighbouring picks, they do not change what is covered
        assert len(set(coreset.indices.tolist()) ^ set(ref_idx.tolist())) <= 0.02 * K


@pytest.mark.parametrize("seed", [0, 3])
def test_pruned_equals_dense_float32_on_gaussian(seed: int) -> None:
    """On well-spread data the two float32 implementations agree index for index."""
    z = random_projection(_gaussian(seed), PROJ, seed)
    pruned_idx, pruned_r = _greedy_pruned(z.numpy(), K, start=17)
    dense_idx, dense_r = _greedy_dense(z, K, start=17)
    np.testing.assert_array_equal(pruned_idx, dense_idx.numpy())
    assert pruned_r == pytest.approx(float(dense_r), rel=1e-5)


@pytest.mark.parametrize("kind", sorted(DATA))
def test_radius_is_the_coverage_radius(kind: str) -> None:
    features = DATA[kind](2)
    coreset = greedy_coreset(features, K, projection_dim=PROJ, seed=2)
    z = random_projection(features, PROJ, 2)
    assert coreset.radius > 0
    assert coreset.radius == pytest.approx(coverage_radius(z.double(), coreset.indices), rel=1e-5)
    assert coreset.radius == pytest.approx(coverage_radius(z, coreset.indices), rel=1e-4)


@pytest.mark.parametrize("kind", sorted(DATA))
def test_radius_within_5_percent_of_exact_greedy(kind: str) -> None:
    """Acceptance criterion: coverage radius within 5% of exact greedy k-center."""
    features = DATA[kind](4)
    coreset = greedy_coreset(features, K, projection_dim=PROJ, seed=4)
    z = random_projection(features, PROJ, 4)
    _, exact_radius = _exact_greedy(z, K, int(coreset.indices[0]))
    assert exact_radius > 0
    assert coreset.radius <= 1.05 * exact_radius
    assert coreset.radius >= 0.95 * exact_radius


def test_more_centres_never_widen_the_radius() -> None:
    features = _clustered(5)
    radii = [greedy_coreset(features, k, PROJ, seed=5).radius for k in (10, 50, 200)]
    assert radii[0] >= radii[1] >= radii[2]


def test_selection_is_deterministic_for_a_seed() -> None:
    features = _gaussian(6)
    a = greedy_coreset(features, 50, PROJ, seed=6)
    b = greedy_coreset(features, 50, PROJ, seed=6)
    torch.testing.assert_close(a.indices, b.indices, rtol=0, atol=0)
    assert a.radius == b.radius


@pytest.mark.parametrize("n_select", [0, -1, 11, 100])
def test_n_select_out_of_range_is_refused(n_select: int) -> None:
    features = torch.randn(10, 8)
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(features, n_select)


def test_selecting_every_point_returns_all_of_them() -> None:
    features = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    coreset = greedy_coreset(features, 64, projection_dim=16, seed=0)
    assert sorted(coreset.indices.tolist()) == list(range(64))
    assert coreset.radius == 0.0


def test_one_point_has_the_radius_of_the_farthest_point() -> None:
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    coreset = greedy_coreset(features, 1, projection_dim=16, seed=1)
    z = random_projection(features, 16, 1)
    expected = float((z - z[coreset.indices[0]]).norm(dim=1).max())
    assert coreset.radius == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n_features", [16, 128])
def test_random_projection_is_identity_up_to_dim(n_features: int) -> None:
    features = torch.randn(20, n_features, dtype=torch.float64)
    out = random_projection(features, 128, seed=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, features.float(), rtol=0, atol=0)


def test_random_projection_is_deterministic_per_seed() -> None:
    features = torch.randn(50, 300)
    a = random_projection(features, 64, seed=7)
    b = random_projection(features, 64, seed=7)
    c = random_projection(features, 64, seed=8)
    assert a.shape == (50, 64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_random_projection_roughly_preserves_distances() -> None:
    """Johnson–Lindenstrauss: pairwise distances survive the projection within ~25%."""
    features = torch.randn(100, 1024, generator=torch.Generator().manual_seed(0))
    z = random_projection(features, 256, seed=0)
    before = torch.pdist(features)
    after = torch.pdist(z)
    ratio = after / before
    assert float(ratio.min()) > 0.75
    assert float(ratio.max()) < 1.25


@pytest.mark.parametrize("kind", ["dense", "pruned", "lazy"])
def test_duplicate_rows_are_never_picked_twice(kind: str) -> None:
    """100 distinct rows, each stored three times, and 150 picks: once every distinct row is
    chosen the rest are covered exactly, and no chosen row may come back (a rounding error
    left on a chosen centre's own distance, or a tie at zero, used to bring one back)."""
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((100, 64)).astype(np.float32) * 3.0
    z = np.repeat(distinct, 3, axis=0)[rng.permutation(300)]
    if kind == "dense":
        idx_t, radius_t = _greedy_dense(torch.from_numpy(z), 150, 0)
        idx, radius = idx_t.numpy(), float(radius_t)
    elif kind == "pruned":
        idx, radius = _greedy_pruned(z, 150, 0)
    else:
        idx, radius, _ = greedy_lazy(z, 150, 0)
    assert len(set(idx.tolist())) == 150
    # the first 100 picks are the 100 distinct rows: coverage is complete after them
    assert len({z[i].tobytes() for i in idx[:100]}) == 100
    assert radius == pytest.approx(0.0, abs=1e-2)


# --- the lazy path (engine.coreset_lazy) against the dense rule, index for index ------------


def _lattice(n: int, d: int, seed: int, span: int = 6) -> np.ndarray:
    """Small integers: every squared distance is exact in float32 and float64 alike (and so
    are |a|² + |b|² - 2ab), so every tie is a real tie and both rules must break it the
    same way (the lowest row)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-span, span + 1, (n, d)).astype(np.float32)


def _lazy_and_dense(
    z: np.ndarray, k: int, start: int
) -> tuple[np.ndarray, float, np.ndarray, float]:
    lazy_idx, lazy_r, _ = greedy_lazy(z, k, start)
    dense_idx, dense_r = _greedy_dense(torch.from_numpy(z).double(), k, start)
    return lazy_idx, lazy_r, dense_idx.numpy(), float(dense_r)


@pytest.mark.parametrize("kind", sorted(DATA))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_equals_dense_rule(kind: str, seed: int) -> None:
    z = random_projection(DATA[kind](seed), PROJ, seed).numpy()
    lazy_idx, lazy_r, dense_idx, dense_r = _lazy_and_dense(z, K, start=seed * 7)
    assert lazy_idx.dtype == np.int64
    np.testing.assert_array_equal(lazy_idx, dense_idx)
    assert lazy_r == pytest.approx(dense_r, rel=1e-5)


@pytest.mark.parametrize(("n", "d", "k"), [(400, 3, 120), (500, 8, 250), (300, 1, 13), (60, 1, 60)])
def test_lazy_breaks_ties_like_the_dense_rule(n: int, d: int, k: int) -> None:
    """Integer lattices, with duplicates (d = 1: at most 13 distinct values): exact ties at
    every step, the lowest row wins them in both rules, and the radius is the same."""
    z = _lattice(n, d, seed=n + d)
    lazy_idx, lazy_r, dense_idx, dense_r = _lazy_and_dense(z, k, start=5)
    np.testing.assert_array_equal(lazy_idx, dense_idx)
    assert lazy_r == dense_r
    assert len(set(lazy_idx.tolist())) == k


def test_lazy_one_centre_and_every_centre() -> None:
    z = _lattice(200, 4, seed=3)
    one_idx, one_r, dense_idx, dense_r = _lazy_and_dense(z, 1, start=11)
    assert one_idx.tolist() == [11] == dense_idx.tolist()
    assert one_r == dense_r == pytest.approx(float(np.linalg.norm(z - z[11], axis=1).max()))
    all_idx, all_r, dense_idx, dense_r = _lazy_and_dense(z, 200, start=0)
    np.testing.assert_array_equal(all_idx, dense_idx)
    assert sorted(all_idx.tolist()) == list(range(200))
    assert all_r == dense_r == 0.0


def test_lazy_reports_progress_to_the_end() -> None:
    calls: list[tuple[int, int]] = []
    z = random_projection(_gaussian(0), PROJ, 0).numpy()
    greedy_lazy(z, K, 0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (K, K)
    assert {total for _, total in calls} == {K}
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert 40 <= len(calls) <= 60  # every ~2 % of the steps
    one: list[tuple[int, int]] = []
    greedy_lazy(z, 1, 0, progress=lambda done, total: one.append((done, total)))
    assert one == [(1, 1)]


def test_cpu_path_uses_the_lazy_kernel_and_reports_progress() -> None:
    features = _clustered(7)
    calls: list[tuple[int, int]] = []
    coreset = greedy_coreset(features, K, PROJ, seed=7, progress=lambda d, t: calls.append((d, t)))
    z = random_projection(features, PROJ, 7).numpy()
    lazy_idx, lazy_r, _ = greedy_lazy(z, K, int(coreset.indices[0]))
    np.testing.assert_array_equal(coreset.indices.numpy(), lazy_idx)
    assert coreset.radius == lazy_r
    assert calls[-1] == (K, K)


@pytest.fixture
def without_numba(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``import numba`` fails in this process (and the lazy module is imported afresh)."""
    monkeypatch.setitem(sys.modules, "numba", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "engine.coreset_lazy")
    coreset_module._lazy_kernels.cache_clear()
    yield
    coreset_module._lazy_kernels.cache_clear()


@pytest.mark.usefixtures("without_numba")
def test_without_numba_the_pruned_path_runs_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    features = _gaussian(8)
    with caplog.at_level(logging.WARNING, logger="engine.coreset"):
        coreset = greedy_coreset(features, K, PROJ, seed=8)
        rest = continue_coreset(features[:100], features[100:110], 10, PROJ, seed=8)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "numba" in warnings[0].getMessage()
    z = random_projection(features, PROJ, 8)
    pruned_idx, _ = _greedy_pruned(z.numpy(), K, int(coreset.indices[0]))
    np.testing.assert_array_equal(coreset.indices.numpy(), pruned_idx)
    assert len(set(rest.indices.tolist())) == 10


def test_an_install_without_numba_imports_and_selects(tmp_path) -> None:
    """A real interpreter where ``import numba`` fails: the engine imports, selects by the
    pruned path with one warning on stderr, and no traceback."""
    script = (
        "import sys, logging; sys.modules['numba'] = None\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import torch\n"
        "from engine.coreset import greedy_coreset\n"
        "c = greedy_coreset(torch.randn(500, 32, generator=torch.Generator().manual_seed(0)), 50)\n"
        "print(len(set(c.indices.tolist())), c.radius > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["50", "True"]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "numba" in warnings[0] and "pruned" in warnings[0]


def _prior_and_rest(z: np.ndarray, n_prior: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``z`` split into centres chosen before and the rest, with each of the rest's
    squared distance to its nearest prior centre and that centre's number."""
    prior, rest = z[:n_prior], z[n_prior:]
    d2 = ((rest[:, None, :].astype(np.float64) - prior[None]) ** 2).sum(-1)
    return rest, d2.min(1), d2.argmin(1).astype(np.int32)


@pytest.mark.parametrize("radius", [None, 3.0])
def test_continue_lazy_equals_the_dense_and_pruned_rules(radius: float | None) -> None:
    """Going on from prior centres (an append), on a lattice (exact distances, real ties):
    the same picks, in order, as the dense rule seeded with the prior distances and as the
    pruned path; with ``radius``, as many more as the pruned path picks (while a row is
    farther than that from every centre)."""
    z = _lattice(600, 4, seed=9)
    rest, nearest2, owner = _prior_and_rest(z, 40)
    lazy_idx, lazy_r, _ = continue_lazy(rest, nearest2, 30, radius=radius)
    r = np.sqrt(nearest2.astype(np.float32))  # as the pruned path measures
    pruned_idx = _continue_pruned(rest, z[:40], r, owner, 30, radius=radius)
    np.testing.assert_array_equal(lazy_idx, pruned_idx)
    assert lazy_r == pytest.approx(max(0.0, float(r.max())))
    dense_idx, dense_r = _greedy_dense(
        torch.from_numpy(rest).double(), 30, None, torch.from_numpy(nearest2)
    )
    np.testing.assert_array_equal(lazy_idx[:30], dense_idx.numpy())
    if radius is None:
        assert lazy_r == pytest.approx(float(dense_r))
    else:
        assert len(lazy_idx) > 30 and lazy_r <= radius < float(dense_r)


def test_continue_lazy_reports_progress_and_can_take_every_row() -> None:
    z = _lattice(300, 3, seed=10)
    rest, nearest2, _ = _prior_and_rest(z, 20)
    calls: list[tuple[int, int]] = []
    idx, radius, _ = continue_lazy(rest, nearest2, 280, lambda d, t: calls.append((d, t)))
    assert sorted(idx.tolist()) == list(range(280)) and radius == 0.0
    assert calls[-1] == (280, 280) and len(calls) == len(set(calls))
    # radius 0: picks go on until every row is a centre or a copy of one
    idx, radius, _ = continue_lazy(rest, nearest2, 5, radius=0.0)
    values = {row.tobytes() for row in rest} - {row.tobytes() for row in z[:20]}
    assert len(idx) == len(values) and radius == 0.0
