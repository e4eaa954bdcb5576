"""Device choice: native bf16 or fp16 on CUDA, real fp32 (no TF32) once CUDA is selected.

No GPU is needed: CUDA's presence and bf16 support are simulated.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.device import select_device


class FakeBf16:
    """A stand-in for ``torch.cuda.is_bf16_supported``: emulated bf16 always counts as
    supported (as on pre-Ampere GPUs), native support only where ``native``. Records what
    it was asked."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self.asked: list[bool] = []  # including_emulation, per call

    def __call__(self, including_emulation: bool = True) -> bool:
        self.asked.append(including_emulation)
        return self.native or including_emulation


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """CUDA present; the TF32 switches on (torch's cuDNN default), restored afterwards
    (by hand: torch's backend flags are properties that monkeypatch cannot restore)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    try:
        yield monkeypatch
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_emulated_bf16_gives_fp16(fake_cuda: pytest.MonkeyPatch) -> None:
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", FakeBf16(native=False))
    spec = select_device(require_cuda=True)
    assert spec.is_cuda
    assert spec.dtype == torch.float16


def test_native_bf16_gives_bf16(fake_cuda: pytest.MonkeyPatch) -> None:
    fake = FakeBf16(native=True)
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", fake)
    assert select_device(require_cuda=True).dtype == torch.bfloat16
    assert fake.asked == [False]  # native support was what it asked about


def test_selecting_cuda_turns_tf32_off(fake_cuda: pytest.MonkeyPatch) -> None:
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", FakeBf16(native=True))
    select_device(require_cuda=True)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
