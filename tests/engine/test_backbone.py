"""Backbones: packaged EfficientNet-Lite0 weights, DINOv2 weights files, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from engine.backbone import efficientnet_lite0_weights_path, load_backbone
from engine.device import DeviceSpec, select_device
from engine.errors import BackboneWeightsError, DeviceError


@pytest.fixture(scope="module")
def spec() -> DeviceSpec:
    return select_device(require_cuda=False)


def test_cpu_spec_is_fp32(spec: DeviceSpec) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU fallback is not taken")
    assert spec.device.type == "cpu"
    assert spec.dtype == torch.float32
    assert not spec.is_cuda
    assert spec.describe().startswith("cpu")


def test_require_cuda_without_cuda_raises() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(DeviceError, match="BDI_REQUIRE_CUDA"):
        select_device(require_cuda=True)


def test_efficientnet_loads_the_packaged_weights(spec: DeviceSpec) -> None:
    backbone = load_backbone("efficientnet_lite0", spec)
    assert backbone.info.weights.endswith("efficientnet-lite0-57934424.pth")
    assert not backbone.info.random_weights
    assert (backbone.info.stride, backbone.info.dim) == (8, 176)
    # the stem really holds the checkpoint's tensors (its BatchNorm folded in), not timm's
    # random init
    checkpoint = torch.load(
        efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True
    )
    stem, gamma, _beta, _mean, var = list(checkpoint.values())[:5]
    eps = timm.create_model("efficientnet_lite0").bn1.eps
    expected = stem * (gamma / torch.sqrt(var + eps)).view(-1, 1, 1, 1)
    torch.testing.assert_close(backbone.net.conv_stem.weight.detach().cpu(), expected)
    assert all(not p.requires_grad for p in backbone.parameters())


def test_efficientnet_outputs_stride_4_8_16_maps(spec: DeviceSpec) -> None:
    backbone = load_backbone("efficientnet_lite0", spec)
    maps = backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in maps)
    # the stride-8 map sets the patch grid
    assert tuple(maps[backbone.info.grid_map].shape[-2:]) == (64 // backbone.info.stride,) * 2


def test_efficientnet_is_deterministic(spec: DeviceSpec) -> None:
    backbone = load_backbone("efficientnet_lite0", spec)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = backbone(x), backbone(x)
    for ma, mb in zip(a, b, strict=True):
        torch.testing.assert_close(ma, mb)


def test_efficientnet_rejects_a_foreign_checkpoint(spec: DeviceSpec, tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises(BackboneWeightsError, match="not an EfficientNet-Lite0"):
        load_backbone("efficientnet_lite0", spec, str(path))


def test_random_backbones_say_so(spec: DeviceSpec) -> None:
    eff = load_backbone("efficientnet_lite0", spec, "random")
    assert eff.info.random_weights
    dino = load_backbone("dinov2_vits14", spec, "random", image_size=56)
    assert dino.info.random_weights
    assert (dino.info.stride, dino.info.dim) == (14, 384)
    (grid,) = dino(torch.randn(1, 3, 56, 56))
    assert grid.shape == (1, 384, 4, 4)


def test_unknown_backbone_is_refused(spec: DeviceSpec) -> None:
    with pytest.raises(BackboneWeightsError, match="unknown backbone"):
        load_backbone("resnet18", spec)


def test_dinov2_needs_a_weights_file(spec: DeviceSpec) -> None:
    with pytest.raises(BackboneWeightsError, match="BDI_BACKBONE_WEIGHTS"):
        load_backbone("dinov2_vits14", spec, None, image_size=56)


def test_dinov2_missing_file(spec: DeviceSpec, tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_backbone("dinov2_vits14", spec, str(tmp_path / "absent.pth"), image_size=56)


def test_dinov2_unreadable_file(spec: DeviceSpec, tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneWeightsError):
        load_backbone("dinov2_vits14", spec, str(path), image_size=56)


def test_dinov2_foreign_checkpoint(spec: DeviceSpec, tmp_path: Path) -> None:
    path = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(4, 4)}, path)
    with pytest.raises(BackboneWeightsError, match="not a DINOv2"):
        load_backbone("dinov2_vits14", spec, str(path), image_size=56)


@pytest.fixture(scope="module")
def official_dinov2(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, torch.Tensor], Path]:
    """A randomly initialised ViT-S/14 state dict in the official DINOv2 layout (518 px,
    37x37 position grid, with ``mask_token``), plus a directory to write it to."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.randn(1, 384)
    return state, tmp_path_factory.mktemp("dinov2")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_dinov2_official_checkpoint_round_trip(
    spec: DeviceSpec, official_dinov2: tuple[dict[str, torch.Tensor], Path], suffix: str
) -> None:
    state, directory = official_dinov2
    path = directory / f"dinov2_vits14_pretrain{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    backbone = load_backbone("dinov2_vits14", spec, str(path), image_size=56)

    assert backbone.info.weights == str(path)
    assert not backbone.info.random_weights
    loaded = backbone.net.model.state_dict()
    torch.testing.assert_close(
        loaded["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"], rtol=0, atol=0
    )
    # every tensor but the position grid is carried over unchanged
    for key, value in loaded.items():
        if key != "pos_embed":
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    # the 37x37 position grid (+ class token) was resampled to the 4x4 grid of 56 px
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert loaded["pos_embed"].shape == (1, 1 + 4 * 4, 384)
    torch.testing.assert_close(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])
    (grid,) = backbone(torch.randn(2, 3, 56, 56))
    assert grid.shape == (2, 384, 4, 4)
    assert torch.isfinite(grid).all()


def test_batch_norm_folding_keeps_outputs():
    """Folding inference BatchNorms into convs changes speed, not features."""
    import copy

    from engine.backbone import _EfficientNetTaps, fold_batch_norms

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial statistics
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    plain = _EfficientNetTaps(model).eval()
    folded = copy.deepcopy(plain)
    assert fold_batch_norms(folded) == 33
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        for a, b in zip(plain(x), folded(x), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_forward_computes_in_the_dtype_asked_for(spec: DeviceSpec) -> None:
    """bf16 / fp16 by autocast, on the CPU as on CUDA; the maps come back fp32 (and
    channels-last on the CPU, as ``aggregate`` wants them) whatever the compute dtype."""
    backbone = load_backbone("efficientnet_lite0", spec)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fp32 = backbone(x, torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        low = backbone(x, dtype)
        for ref, got in zip(fp32, low, strict=True):
            assert got.dtype == torch.float32
            if spec.device.type == "cpu":
                assert got.is_contiguous(memory_format=torch.channels_last)
            assert not torch.equal(ref, got)  # really computed in lower precision
            # ... and still the same features, to that precision
            assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_forward_defaults_to_the_device_dtype(spec: DeviceSpec) -> None:
    fp32_net, bf16_net = (
        load_backbone("efficientnet_lite0", DeviceSpec(spec.device, dtype))
        for dtype in (torch.float32, torch.bfloat16)
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for a, b in zip(bf16_net(x), fp32_net(x, torch.bfloat16), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(bf16_net(x, torch.float32), fp32_net(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(bf16_net(x), fp32_net(x), strict=True))
