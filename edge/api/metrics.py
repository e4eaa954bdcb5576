"""Prometheus metrics of one app, in their own registry (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bdi_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "bdi_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("bdi_http_requests_in_flight", "Requests being served", registry=r)
        self.inferences = Counter(
            "bdi_inferences", "Images scored over REST, by verdict", ["verdict"], registry=r
        )
        self.trainings = Counter(
            "bdi_trainings", "Trainings (fit_ok), by result", ["result"], registry=r
        )
        self.training_seconds = Histogram(
            "bdi_training_duration_seconds",
            "Time to build a model",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.calibrations = Counter(
            "bdi_calibrations", "Calibrations stored, by result", ["result"], registry=r
        )
        self.fits_running = Gauge("bdi_trainings_running", "Trainings in progress", registry=r)
        # dynamic batching of REST inference (edge.api.batching)
        self.batch_frames = Histogram(
            "bdi_rest_batch_frames",
            "Frames per engine call of REST inference",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_frames = Gauge(
            "bdi_rest_queue_frames", "Frames of REST requests waiting for the engine", registry=r
        )
        self.queue_refusals = Counter(
            "bdi_rest_queue_refusals",
            "REST inference requests refused by the queue: full (429) or past the deadline (503)",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
