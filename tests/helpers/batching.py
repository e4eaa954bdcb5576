"""An engine stand-in for the REST batcher's tests: it records every engine call and can
hold the calls behind a gate, so that a test decides when a batch finishes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from engine import Inference, InferItem


class GatedEngine:
    """``engine`` whose :meth:`infer` records its frames, waits for :attr:`gate` (open by
    default) and then scores them, or raises what ``fail`` says for a batch."""

    def __init__(
        self,
        engine: object,
        fail: Callable[[Sequence[InferItem]], Exception | None] | None = None,
    ) -> None:
        self.engine = engine
        self.fail = fail
        self.calls: list[list[InferItem]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a call has started

    @property
    def batch_size(self) -> int:
        return int(getattr(self.engine, "batch_size", 4))

    def infer(self, items: Sequence[InferItem]) -> list[Inference]:
        self.calls.append(list(items))
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        error = self.fail(items) if self.fail else None
        if error is not None:
            raise error
        infer: Callable[[Sequence[InferItem]], list[Inference]] = self.engine.infer
        return infer(items)

    def frames_scored(self) -> int:
        return sum(len(c) for c in self.calls)


class Echo:
    """An engine answering each frame OK with the frame's first pixel as its score."""

    batch_size = 4

    def infer(self, items: Sequence[InferItem]) -> list[Inference]:
        return [Inference("OK", float(item.image.flat[0]), 1e9) for item in items]
