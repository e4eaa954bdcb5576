"""Device and precision choice, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import DeviceError


@dataclass(frozen=True)
class DeviceSpec:
    device: torch.device
    dtype: torch.dtype  # compute dtype of the backbone; features are always fp32 afterwards

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return f"{self.device.type} ({name}, {str(self.dtype).removeprefix('torch.')})"


def select_device(require_cuda: bool = True, threads: int = 0) -> DeviceSpec:
    """CUDA with bf16 (fp16 where bf16 is unsupported) when present, else fp32 on the CPU.

    ``require_cuda`` refuses to run without CUDA (the production default), so an edge box
    whose GPU driver broke fails loudly instead of silently running 20x slower.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceSpec(torch.device("cuda"), dtype)
    if require_cuda:
        raise DeviceError(
            "CUDA is required but not available (BDI_REQUIRE_CUDA=1). "
            "Check the GPU driver, or set BDI_REQUIRE_CUDA=0 to allow the CPU."
        )
    return DeviceSpec(torch.device("cpu"), torch.float32)
