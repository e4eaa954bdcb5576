"""Patch feature aggregation onto the scoring grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.patchcore import aggregate


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


def test_aggregate_is_the_same_for_channels_last_inputs() -> None:
    maps = _maps()
    cl = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    out = aggregate(cl, grid_map=1)
    torch.testing.assert_close(out, aggregate(maps, grid_map=1))
    assert out.is_contiguous()


def test_aggregate_defaults_to_the_first_map() -> None:
    fine, mid, _ = _maps()
    assert aggregate([mid, fine]).shape == (2, 8, 8, 7)
