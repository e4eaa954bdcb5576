"""Exact nearest neighbours on an accelerator: faiss-gpu, or torch where faiss-gpu is absent.

:class:`engine.knn.KnnIndex` keeps its bank in a CPU faiss index (for reading rows back
and saving) and, with ``use_gpu``, sends its searches to a :class:`DeviceSearch` made
here. Two kinds exist:

- ``faiss-gpu``: faiss's own ``GpuIndexFlatL2``, when the installed faiss has GPU support
  and sees a GPU (its wheel must match the host's CUDA driver).
- ``torch``: a batched matrix product and top-k in fp32 on the torch device
  (:class:`TorchKnn`). It runs wherever CUDA torch does, faiss or no faiss.

Where both exist the faster on this machine is chosen once per process, by measurement
(:func:`device_backend`). Searches on the device are serialised process-wide
(:data:`DEVICE_LOCK`): faiss's GPU indexes are not thread-safe even for searches, the REST
API scores in a thread pool, and one search at a time also bounds the scratch memory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Literal, Protocol

import faiss
import numpy as np
import torch

from engine.errors import DeviceError, DeviceMemoryError

log = logging.getLogger(__name__)

DeviceBackend = Literal["faiss-gpu", "torch"]
# GPU scratch memory faiss may hold per process (its default reserves ~1.5 GiB per
# StandardGpuResources); exact searches of a batch's patches need far less
GPU_TEMP_MEMORY_BYTES = 256 * 1024 * 1024
# largest (queries x bank rows) distance block a torch search holds at once, in fp32
TORCH_BLOCK_BYTES = 256 * 1024 * 1024
# candidates per query taken from the matrix product beyond the k asked for, then measured
# directly: the product's rounding (|q|² - 2 q·m + |m|², float32) can only swap rows whose
# distances are within it, so the true k nearest are among the k + RECHECK_EXTRA
RECHECK_EXTRA = 8
# every search on the device, one at a time (see the module's docstring)
DEVICE_LOCK = threading.Lock()
# bank rows and queries of the trial that picks a backend (a large model's bank, a batch
# of 16 images of 256 patches)
TRIAL_SHAPE = (16384, 4096)
# where the torch backend keeps its bank (the CPU tests run the same code on "cpu")
TORCH_DEVICE = "cuda"


class DeviceSearch(Protocol):
    """What :class:`engine.knn.KnnIndex` asks of a device index."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and ids ``(Q, k)``, nearest first, as faiss answers."""
        ...


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.cache
def gpu_resources() -> faiss.StandardGpuResources:
    """The process's one ``StandardGpuResources``, made on first use and shared by every
    GPU index (one each would reserve scratch and pinned host memory per cached model).
    Held here for the life of the process, which keeps it alive as long as its indexes:
    faiss index objects refuse new attributes, so it cannot ride on the index."""
    resources = faiss.StandardGpuResources()
    resources.setTempMemory(GPU_TEMP_MEMORY_BYTES)
    return resources


class FaissGpu:
    """faiss-gpu's flat L2 index over a bank, on GPU 0."""

    def __init__(self, cpu_index: faiss.Index) -> None:
        with DEVICE_LOCK, _device_errors("placing the index on the GPU"):
            self.index = faiss.index_cpu_to_gpu(gpu_resources(), 0, cpu_index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with DEVICE_LOCK, _device_errors("the kNN search"):
            return self.index.search(queries, k)


class TorchKnn:
    """Exact L2 nearest neighbours of query rows in a bank held on a torch device.

    Candidates come from one matrix product per block of queries (``|q|² - 2 q·m + |m|²``
    in fp32, so blocks of at most :data:`TORCH_BLOCK_BYTES`) and its top-k; each query's
    ``k + RECHECK_EXTRA`` best candidates are then measured directly (``|q - m|²``), which
    does not depend on the product's rounding, and the nearest ``k`` of those are kept.
    """

    def __init__(self, bank: np.ndarray, device: torch.device) -> None:
        self.device = device
        with DEVICE_LOCK, _device_errors("placing the index on the GPU"):
            self.bank = torch.from_numpy(np.ascontiguousarray(bank, np.float32)).to(device)
            self.bank_sq = (self.bank * self.bank).sum(1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.bank.shape[0]
        q_all = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        k_out = min(k, m)
        take = min(k + RECHECK_EXTRA, m)
        block = max(1, TORCH_BLOCK_BYTES // (4 * max(m, 1)))
        d2_out = np.full((len(q_all), k), np.inf, np.float32)
        ids_out = np.full((len(q_all), k), -1, np.int64)
        with DEVICE_LOCK, _device_errors("the kNN search"), torch.inference_mode():
            for start in range(0, len(q_all), block):
                q = q_all[start : start + block].to(self.device, non_blocking=True)
                prod = torch.addmm(self.bank_sq[None, :], q, self.bank.T, alpha=-2.0)
                cand = prod.topk(take, dim=1, largest=False).indices  # (b, take)
                diff = self.bank[cand] - q[:, None, :]  # (b, take, C)
                d2 = (diff * diff).sum(-1)
                best, order = d2.topk(k_out, dim=1, largest=False)
                ids = cand.gather(1, order)
                d2_out[start : start + len(q), :k_out] = best.cpu().numpy()
                ids_out[start : start + len(q), :k_out] = ids.cpu().numpy()
        return d2_out, ids_out


@contextlib.contextmanager
def _device_errors(what: str) -> Iterator[None]:
    """A device failure named for what it is, never taken for a broken model: out of memory
    becomes :class:`DeviceMemoryError` (transient: the caching allocator's free blocks are
    released, so the next batch can succeed), any other CUDA/faiss error
    :class:`DeviceError`."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise DeviceError(f"the GPU failed in {what}: {exc}") from exc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise DeviceMemoryError(f"the GPU ran out of memory in {what}: {exc}") from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError``, or faiss's RuntimeError from a failed ``cudaMalloc``."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def device_search(bank: np.ndarray, cpu_index: faiss.Index) -> DeviceSearch:
    """The device index of a bank on this process's device backend (one must exist)."""
    backend = device_backend()
    if backend == "faiss-gpu":
        return FaissGpu(cpu_index)
    return TorchKnn(bank, torch.device(TORCH_DEVICE))


@functools.cache
def device_backend() -> DeviceBackend | None:
    """Which accelerator searches this process's indexes; None: none is present.

    With both faiss-gpu and CUDA torch, each searches the same synthetic bank once to warm
    up and once timed, and the faster wins (logged); a faiss wheel built for another CUDA
    than the driver's fails there and loses."""
    has_faiss, has_torch = faiss_gpu_available(), torch_cuda_available()
    if not has_torch:
        return "faiss-gpu" if has_faiss else None
    if not has_faiss:
        return "torch"
    timings = {name: _time_backend(name) for name in ("faiss-gpu", "torch")}
    chosen: DeviceBackend = "torch" if timings["torch"] < timings["faiss-gpu"] else "faiss-gpu"
    log.info("kNN device backend chosen", extra={"backend": chosen, "search_s": timings})
    return chosen


def _time_backend(name: DeviceBackend) -> float:
    """Seconds for one trial search (:data:`TRIAL_SHAPE`); inf when the backend fails."""
    rows, queries = TRIAL_SHAPE
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((rows, 384), dtype=np.float32)
    q = rng.standard_normal((queries, 384), dtype=np.float32)
    try:
        if name == "faiss-gpu":
            flat = faiss.IndexFlatL2(bank.shape[1])
            flat.add(bank)
            index: DeviceSearch = FaissGpu(flat)
        else:
            index = TorchKnn(bank, torch.device(TORCH_DEVICE))
        index.search(q, 1)
        t0 = time.perf_counter()
        index.search(q, 1)
        return time.perf_counter() - t0
    except Exception as exc:  # a mismatched faiss wheel: the other backend serves
        log.warning("kNN device backend unusable", extra={"backend": name, "error": str(exc)})
        return float("inf")
