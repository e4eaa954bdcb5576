"""Device and precision choice, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import DeviceError, EngineError

# the backbone's compute dtypes, by the name a model's metadata records
# (``ModelMeta.compute_dtype``)
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def compute_dtype(name: str) -> torch.dtype:
    """The torch dtype a model's recorded compute dtype names; EngineError if none."""
    if not isinstance(name, str) or name not in COMPUTE_DTYPES:
        raise EngineError(
            f"unknown compute dtype {name!r}: expected one of {', '.join(COMPUTE_DTYPES)}"
        )
    return COMPUTE_DTYPES[name]


@dataclass(frozen=True)
class DeviceSpec:
    device: torch.device
    dtype: torch.dtype  # compute dtype of the backbone; features are always fp32 afterwards

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return f"{self.device.type} ({name}, {dtype_name(self.dtype)})"


def select_device(require_cuda: bool = True, threads: int = 0) -> DeviceSpec:
    """CUDA with bf16 (fp16 where the GPU has no native bf16) when present, else fp32 on
    the CPU. The dtype is what new models are fitted in; a stored model is always scored in
    the dtype it was fitted in (``ModelMeta.compute_dtype``).

    ``require_cuda`` refuses to run without CUDA (the production default), so an edge box
    whose GPU driver broke fails loudly instead of silently running 20x slower.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        # native bf16 only (Ampere and later): torch reports emulated bf16 as supported too,
        # and an emulated backbone is slower than fp16
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = torch.bfloat16 if native else torch.float16
        # a model fitted in fp32 must score in real fp32 on the GPU too: matmuls and cuDNN
        # convolutions would otherwise round their inputs to TF32 (10-bit mantissa)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return DeviceSpec(torch.device("cuda"), dtype)
    if require_cuda:
        raise DeviceError(
            "CUDA is required but not available (BDI_REQUIRE_CUDA=1). "
            "Check the GPU driver, or set BDI_REQUIRE_CUDA=0 to allow the CPU."
        )
    return DeviceSpec(torch.device("cpu"), torch.float32)
