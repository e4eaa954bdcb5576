"""The accelerator's kNN, on the CPU: the torch search checked against faiss on real features,
and the GPU path run through the real code with faiss-gpu simulated (its GPU calls replaced
by CPU equivalents: ``index_cpu_to_gpu`` hands back a clone of the index)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from engine import artifact, device_knn
from engine.decision import InferItem
from engine.device import DeviceSpec
from engine.device_knn import TorchKnn
from engine.engine import Engine
from engine.errors import DeviceError, DeviceMemoryError
from engine.images import read_image
from engine.knn import KnnIndex
from tests.engine.conftest import tiny_settings
from tests.helpers.images import texture, with_defect


class _FakeGpuResources:
    """faiss-gpu's ``StandardGpuResources`` as far as :mod:`engine.device_knn` uses it."""

    made = 0

    def __init__(self) -> None:
        type(self).made += 1
        self.temp_memory: int | None = None

    def setTempMemory(self, size: int) -> None:  # noqa: N802  (faiss's name)
        self.temp_memory = size


class _SimulatedGpuIndex:
    """A GPU index stand-in: a real faiss-cpu clone that, like faiss's GPU indexes, takes no
    new attributes, and that counts how many threads are inside ``search`` at once."""

    __slots__ = ("inner",)
    active = 0
    most_active = 0
    fail_next: BaseException | None = None
    counter_lock = threading.Lock()

    def __init__(self, inner: faiss.Index) -> None:
        self.inner = inner

    @property
    def ntotal(self) -> int:
        return int(self.inner.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cls = type(self)
        with cls.counter_lock:
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
            failure, cls.fail_next = cls.fail_next, None
        try:
            if failure is not None:
                raise failure
            time.sleep(0.002)  # long enough for an unserialised caller to overlap
            return self.inner.search(queries, k)
        finally:
            with cls.counter_lock:
                cls.active -= 1


@pytest.fixture
def simulated_faiss_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """faiss with GPU support and one GPU, torch without CUDA. Yields the resources objects
    handed to ``index_cpu_to_gpu``, one per placed index."""
    placed: list[object] = []

    def to_gpu(resources: object, device: int, index: faiss.Index) -> _SimulatedGpuIndex:
        assert device == 0
        placed.append(resources)
        return _SimulatedGpuIndex(faiss.clone_index(index))

    monkeypatch.setattr(faiss, "StandardGpuResources", _FakeGpuResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(device_knn, "faiss_gpu_available", lambda: True)
    monkeypatch.setattr(device_knn, "torch_cuda_available", lambda: False)
    _FakeGpuResources.made = 0
    _SimulatedGpuIndex.active = _SimulatedGpuIndex.most_active = 0
    _SimulatedGpuIndex.fail_next = None
    _clear_caches()
    yield placed
    _clear_caches()


@pytest.fixture
def simulated_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CUDA torch without faiss-gpu (the lent GPU machines): the torch backend, run on the
    CPU."""
    monkeypatch.setattr(device_knn, "faiss_gpu_available", lambda: False)
    monkeypatch.setattr(device_knn, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(device_knn, "TORCH_DEVICE", "cpu")
    _clear_caches()
    yield
    _clear_caches()


def _clear_caches() -> None:
    device_knn.device_backend.cache_clear()
    device_knn.gpu_resources.cache_clear()


class _CudaSpec(DeviceSpec):
    """A device spec that says CUDA while its tensors stay on the CPU: the engine takes the
    GPU path's decisions (GPU indexes, no CPU-only shortlist) on a machine without one."""

    @property
    def is_cuda(self) -> bool:
        return True


def _engine(spec: DeviceSpec | None = None) -> Engine:
    from engine.config import EngineConfig

    spec = spec or _CudaSpec(torch.device("cpu"), torch.float32)
    return Engine(EngineConfig.from_settings(tiny_settings(knn_shortlist=8)), spec)


# --- the torch search ------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_features(metal_plate: Path) -> tuple[np.ndarray, np.ndarray]:
    """Patch features of real metal-plate photographs: a bank from OK training images and
    queries from test images (OK and defective), at 128 px (256 patches each)."""
    from engine.config import EngineConfig
    from engine.device import select_device

    engine = Engine(EngineConfig.from_settings(tiny_settings(image_size=128)), select_device(False))
    bb = engine.backbone()
    train = sorted((metal_plate / "train" / "good").glob("*.png"))[:8]
    test = sorted((metal_plate / "test" / "defect").glob("*.png"))[:4]
    test += sorted((metal_plate / "test" / "good").glob("*.png"))[:4]
    bank = engine.embed([read_image(str(p)) for p in train], bb, 128)
    queries = engine.embed([read_image(str(p)) for p in test], bb, 128)
    return bank.reshape(-1, bank.shape[-1]), queries.reshape(-1, queries.shape[-1])


def test_torch_search_matches_faiss_on_real_features(
    real_features: tuple[np.ndarray, np.ndarray],
) -> None:
    bank, queries = real_features
    assert bank.shape == (2048, 176) and queries.shape == (2048, 176)
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(bank)
    want_d2, want_ids = flat.search(queries, 3)
    got_d2, got_ids = TorchKnn(bank, torch.device("cpu")).search(queries, 3)
    assert got_d2.dtype == np.float32 and got_ids.dtype == np.int64
    # the truth, in float64
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    true_d2 = (q * q).sum(1)[:, None] - 2.0 * q @ b.T + (b * b).sum(1)[None, :]
    true_ids = np.argsort(true_d2, axis=1)[:, :3]
    # identical neighbours (bar exact near-ties, which real features do not show)
    assert (got_ids == true_ids).mean() > 0.999
    assert (got_ids == want_ids).mean() > 0.999
    # distances measured directly: float32 exact, where faiss's own carry the rounding of
    # its matrix product (up to ~2e-4 relative here)
    np.testing.assert_allclose(got_d2, np.take_along_axis(true_d2, got_ids, 1), rtol=1e-5)
    np.testing.assert_allclose(got_d2, want_d2, rtol=1e-3)


def test_torch_search_in_blocks_and_past_the_bank(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((50, 16)).astype(np.float32)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    whole = TorchKnn(bank, torch.device("cpu")).search(queries, 4)
    # a block of 3 queries at a time: the answers cannot depend on the blocking
    monkeypatch.setattr(device_knn, "TORCH_BLOCK_BYTES", 3 * 4 * 50)
    blocked = TorchKnn(bank, torch.device("cpu")).search(queries, 4)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_array_equal(whole[0], blocked[0])
    # k beyond the bank: faiss's answer for the missing ones (-1, infinite distance)
    d2, ids = TorchKnn(bank[:2], torch.device("cpu")).search(queries[:3], 4)
    assert (ids[:, 2:] == -1).all() and np.isinf(d2[:, 2:]).all()
    assert set(ids[:, :2].ravel().tolist()) <= {0, 1}


def test_torch_backend_through_the_index(simulated_torch_cuda: None) -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = rng.standard_normal((4, 30, 24)).astype(np.float32)
    index = KnnIndex("ivf", use_gpu=True).fit(bank)
    assert index.use_gpu and index.backend == "torch" and index.kind == "exact"
    cpu = KnnIndex("exact").fit(bank)
    np.testing.assert_allclose(index.search_images(queries), cpu.search_images(queries), rtol=1e-5)


# --- faiss-gpu, simulated ---------------------------------------------------------------
def test_gpu_indexes_share_one_bounded_resources_object(
    simulated_faiss_gpu: list[object],
) -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((64, 8)).astype(np.float32)
    first, second = KnnIndex(use_gpu=True), KnnIndex(use_gpu=True)
    first.fit(bank)
    second.fit(bank[:32])
    assert first.backend == second.backend == "faiss-gpu"
    assert _FakeGpuResources.made == 1
    assert len(simulated_faiss_gpu) == 2 and simulated_faiss_gpu[0] is simulated_faiss_gpu[1]
    resources = simulated_faiss_gpu[0]
    assert isinstance(resources, _FakeGpuResources)
    assert resources.temp_memory == device_knn.GPU_TEMP_MEMORY_BYTES
    distances, ids = first.search(bank[:3], k=1)
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(distances[:, 0], 0.0, atol=1e-4)


def test_fit_infer_save_load_on_the_simulated_gpu(
    simulated_faiss_gpu: list[object], tmp_path: Path
) -> None:
    """The GPU path end to end through the real code: its scores are the CPU path's, and a
    model saved from the GPU loads back onto it with the same version and scores."""
    train = [texture("stripes", seed) for seed in range(4)]
    frames = [texture("stripes", 10), with_defect(texture("stripes", 11))]
    gpu_engine = _engine()
    fitted = gpu_engine.fit(train).model
    assert fitted.index.backend == "faiss-gpu"
    on_gpu = gpu_engine.infer([InferItem(fitted, f) for f in frames])
    assert [r.verdict for r in on_gpu] == ["OK", "NG"]

    cpu_engine = _engine(DeviceSpec(torch.device("cpu"), torch.float32))
    cpu_model = cpu_engine.fit(train).model
    assert cpu_model.index.backend == "faiss-cpu"
    np.testing.assert_array_equal(cpu_model.index.bank(), fitted.index.bank())
    on_cpu = cpu_engine.infer([InferItem(cpu_model, f) for f in frames])
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.score == pytest.approx(c.score, rel=1e-5)

    artifact.save(fitted, tmp_path, "m")
    loaded = artifact.load(tmp_path, "m", use_gpu=True)
    assert loaded.index.backend == "faiss-gpu" and loaded.version == fitted.version
    again = gpu_engine.infer([InferItem(loaded, f) for f in frames])
    assert [r.score for r in again] == pytest.approx([r.score for r in on_gpu], rel=1e-6)


def test_four_threads_scoring_one_model_never_search_the_gpu_at_once(
    simulated_faiss_gpu: list[object],
) -> None:
    engine = _engine()
    model = engine.fit([texture("stripes", seed) for seed in range(4)]).model
    frames = [texture("stripes", 20 + i) for i in range(4)]
    want = [r.score for r in engine.infer([InferItem(model, f) for f in frames])]
    got: dict[int, list[float | None]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for _ in range(3):
                got[t] = [r.score for r in engine.infer([InferItem(model, f) for f in frames])]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(scores == pytest.approx(want, rel=1e-6) for scores in got.values())
    assert _SimulatedGpuIndex.most_active == 1


def test_out_of_memory_in_a_search_is_error_verdicts_then_the_next_batch_succeeds(
    simulated_faiss_gpu: list[object],
) -> None:
    engine = _engine()
    model = engine.fit([texture("stripes", seed) for seed in range(4)]).model
    items = [InferItem(model, texture("stripes", 30 + i)) for i in range(3)]
    _SimulatedGpuIndex.fail_next = RuntimeError(
        "Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory: "
        "Failed to cudaMalloc 1073741824 bytes on device 0 (error 2 out of memory)"
    )
    failed = engine.infer(items)
    assert [r.verdict for r in failed] == ["ERROR"] * 3
    assert {r.error_kind for r in failed} == {"DeviceMemoryError"}
    assert all("out of memory" in (r.error or "") for r in failed)
    recovered = engine.infer(items)
    assert [r.verdict for r in recovered] == ["OK"] * 3


def test_gpu_failures_are_named_for_what_they_are(
    simulated_faiss_gpu: list[object], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Placing a sound model's index on a full GPU is DeviceMemoryError, not a damaged
    model; another driver error is DeviceError; a damaged file stays ArtifactError."""
    model = _engine(DeviceSpec(torch.device("cpu"), torch.float32))
    fitted = model.fit([texture("stripes", seed) for seed in range(3)]).model
    artifact.save(fitted, tmp_path, "m")

    def refuse(message: str) -> Callable[..., object]:
        def to_gpu(*args: object) -> object:
            raise RuntimeError(message)

        return to_gpu

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse("cudaMalloc: out of memory"))
    with pytest.raises(DeviceMemoryError, match="out of memory"):
        artifact.load(tmp_path, "m", use_gpu=True)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse("no kernel image is available"))
    with pytest.raises(DeviceError, match="no kernel image") as raised:
        artifact.load(tmp_path, "m", use_gpu=True)
    assert not isinstance(raised.value, DeviceMemoryError)
    (tmp_path / f"m{artifact.INDEX}").write_bytes(b"not a faiss index")
    with pytest.raises(artifact.ArtifactError, match="unreadable index"):
        artifact.load(tmp_path, "m", use_gpu=True)


def test_both_backends_present_the_faster_is_chosen(
    simulated_faiss_gpu: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_knn, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(device_knn, "TORCH_DEVICE", "cpu")
    times = {"faiss-gpu": 0.02, "torch": 0.01}
    monkeypatch.setattr(device_knn, "_time_backend", lambda name: times[name])
    device_knn.device_backend.cache_clear()
    assert device_knn.device_backend() == "torch"
    times.update({"faiss-gpu": 0.005})
    device_knn.device_backend.cache_clear()
    assert device_knn.device_backend() == "faiss-gpu"


def test_a_backend_that_fails_its_trial_loses(
    simulated_faiss_gpu: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faiss wheel built for another CUDA than the driver's fails on its first index: the
    trial gives it an infinite time and torch serves."""

    def mismatched(*args: object) -> object:
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", mismatched)
    monkeypatch.setattr(device_knn, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(device_knn, "TORCH_DEVICE", "cpu")
    monkeypatch.setattr(device_knn, "TRIAL_SHAPE", (256, 16))
    assert device_knn._time_backend("faiss-gpu") == float("inf")
    assert device_knn._time_backend("torch") < float("inf")
    device_knn.device_backend.cache_clear()
    assert device_knn.device_backend() == "torch"
