"""Patch feature aggregation onto the scoring grid; shortlist bounds; the region search;
model metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.anomaly_map import anomaly_maps, resize_map
from engine.patchcore import MapSpec, ModelMeta, _search_near_regions, aggregate, content_version


def _maps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, 3, 16, 16, generator=g),  # finer than the grid
        torch.randn(2, 4, 8, 8, generator=g),  # the grid
        torch.randn(2, 5, 4, 4, generator=g),  # coarser
    ]


def test_aggregate_brings_every_map_onto_the_chosen_grid() -> None:
    fine, mid, coarse = _maps()
    out = aggregate([fine, mid, coarse], grid_map=1)
    assert out.shape == (2, 8, 8, 3 + 4 + 5)
    pooled = [F.avg_pool2d(m, 3, stride=1, padding=1) for m in (fine, mid, coarse)]
    # finer map: each grid cell is the mean of its 2x2 block of the 3x3-averaged map
    block = pooled[0][:, :, 2:4, 4:6].mean(dim=(2, 3))
    torch.testing.assert_close(out[:, 1, 2, :3], block)
    torch.testing.assert_close(out[..., 3:7], pooled[1].permute(0, 2, 3, 1))
    up = F.interpolate(pooled[2], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 7:], up.permute(0, 2, 3, 1))


def test_a_map_twice_as_fine_is_pooled_then_area_averaged_everywhere() -> None:
    """The fused stride-2 kernel equals 3x3 average then 2x2 area average at every cell,
    the zero-padded borders included; a map three times finer takes the general path."""
    fine, mid, _ = _maps()
    out = aggregate([fine, mid], grid_map=1)
    ref = F.adaptive_avg_pool2d(F.avg_pool2d(fine, 3, stride=1, padding=1), (8, 8))
    torch.testing.assert_close(out[..., :3], ref.permute(0, 2, 3, 1))
    finer = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    out3 = aggregate([finer, mid], grid_map=1)
    ref3 = F.adaptive_avg_pool2d(F.avg_pool2d(finer, 3, stride=1, padding=1), (8, 8))
    torch.testing.assert_close(out3[..., :3], ref3.permute(0, 2, 3, 1))


def test_aggregate_is_the_same_for_channels_last_inputs() -> None:
    maps = _maps()
    cl = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    out = aggregate(cl, grid_map=1)
    torch.testing.assert_close(out, aggregate(maps, grid_map=1))
    assert out.is_contiguous()


def test_aggregate_defaults_to_the_first_map() -> None:
    fine, mid, _ = _maps()
    assert aggregate([mid, fine]).shape == (2, 8, 8, 7)


def test_shortlist_bounds_are_upper_bounds_exact_when_the_neighbour_is_listed(
    trained_model,
) -> None:
    model = trained_model("stripes")
    assert model.shortlist is not None
    bank = model.index.bank()
    p = model.shortlist.shape[0]
    rng = np.random.default_rng(0)
    # queries: bank rows themselves (distance 0 when listed at that cell) plus noise
    flat = bank[rng.integers(0, len(bank), (3, p))] + rng.normal(0, 0.01, (3, p, bank.shape[1]))
    flat = flat.astype(np.float32)
    bounds = model.shortlist_bounds(flat)
    true = model.index.exact(flat.reshape(-1, bank.shape[1])).reshape(3, p)
    assert bounds is not None and bounds.shape == (3, p)
    assert (bounds >= true).all()
    listed = bank[model.shortlist[0, 0]]
    near = np.linalg.norm(flat[0, 0] - listed)
    assert bounds[0, 0] <= near + 1e-3


FRAMES = 24


class _TrueDistances:
    """An index stand-in whose search answers the true distances ``truth (B, P)``."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.searched = 0

    def settle(
        self, queries: object, dist: np.ndarray, where: np.ndarray, exact: bool = False
    ) -> np.ndarray:
        assert exact, "regions are measured on exact distances"
        dist[where] = self.truth[where]
        self.searched += int(where.sum())
        return dist


@pytest.mark.parametrize("loose", ["everywhere", "spikes"])
@pytest.mark.parametrize("frame", [(224, 224), (512, 512), (300, 260), (97, 150)])
def test_region_search_gives_the_fully_searched_map_wherever_it_reaches_the_threshold(
    frame: tuple[int, int], loose: str
) -> None:
    """Patches start as upper bounds of their distances; after the region search every
    full-size pixel that may reach the threshold holds the value of the map of the true
    distances, so regions are the same. Bounds: up to twice the distance everywhere (most
    patches are then never searched), or exact but for a few far too high ones, whose
    faint reach into the pixels next to a region shows if any of them is left unsearched."""
    height, width = frame
    rng = np.random.default_rng(height * width)
    truth = rng.random((FRAMES, 28 * 28)).astype(np.float32)
    for i in range(FRAMES):  # a blob per frame, of a few cells
        y, x, r = rng.integers(4, 24), rng.integers(4, 24), rng.integers(1, 4)
        blob = truth[i].reshape(28, 28)
        blob[y - r : y + r, x - r : x + r] += 3.0
    if loose == "everywhere":
        bounds = truth * (1.0 + rng.random(truth.shape).astype(np.float32))
    else:
        bounds = truth + 10.0 * (rng.random(truth.shape) < 0.1).astype(np.float32)
    threshold = 2.0
    index = _TrueDistances(truth)
    patch, searched = bounds.copy(), np.zeros(truth.shape, dtype=bool)
    frames = np.ones(FRAMES, dtype=bool)
    _search_near_regions(index, None, patch, searched, frames, (28, 28), None, threshold,
                         MapSpec(224, 224, 4.0))  # type: ignore[arg-type]  # fmt: skip
    fast = anomaly_maps(patch.reshape(FRAMES, 28, 28), 224, 4.0)
    full = anomaly_maps(truth.reshape(FRAMES, 28, 28), 224, 4.0)
    for i in range(FRAMES):
        a, b = resize_map(fast[i], height, width), resize_map(full[i], height, width)
        hot = b >= threshold
        assert hot.any()
        np.testing.assert_array_equal(a >= threshold, hot)
        np.testing.assert_allclose(a[hot], b[hot], rtol=1e-6)
    assert index.searched < (0.6 if loose == "everywhere" else 1.0) * truth.size


# A model's metadata as stored before ModelMeta.compute_dtype existed, and the content
# version that metadata and _BANK were named by then.
_META = dict(
    backbone="efficientnet_lite0", backbone_weights="sha256:0123456789abcdef", image_size=224,
    grid=(28, 28), feature_dim=176, mm_per_px=0.05, coreset_rate=0.1, n_train_images=54,
    n_patches=42336, memory_bank=4233, baseline_images=54, created_at=1767225600.0,
)  # fmt: skip
_KEYS = {"backbone", "backbone_weights", "coreset_rate", "created_at", "feature_dim", "format",
         "grid", "image_size", "memory_bank", "mm_per_px", "n_patches", "n_train_images",
         "nominal_images"}  # fmt: skip
_BANK = np.arange(12, dtype=np.float32).reshape(4, 3)
_VERSION_BEFORE_COMPUTE_DTYPE = "0eb9973097e68481"


def test_fp32_metadata_and_version_are_what_they_were() -> None:
    meta = ModelMeta(**_META)  # type: ignore[arg-type]
    assert meta.compute_dtype == "float32"
    assert set(meta.to_dict()) == _KEYS
    assert content_version(meta, _BANK) == _VERSION_BEFORE_COMPUTE_DTYPE


def test_a_lower_precision_is_recorded_and_read_back() -> None:
    meta = ModelMeta(**_META, compute_dtype="bfloat16")  # type: ignore[arg-type]
    stored = meta.to_dict()
    assert stored["compute_dtype"] == "bfloat16"
    assert ModelMeta.from_dict(stored) == meta
    assert content_version(meta, _BANK) != _VERSION_BEFORE_COMPUTE_DTYPE
    old = ModelMeta(**_META).to_dict()  # type: ignore[arg-type]
    assert ModelMeta.from_dict(old).compute_dtype == "float32"  # absent: fp32
