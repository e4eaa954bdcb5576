"""Benchmarks that print JSON: the engine against its backbone (``bdi bench engine``), the
consumer group on a broker (``bdi bench pipeline``), part verdicts and the trace store
(``bdi bench parts``) and the CUDA path (``gpu_check``).
Developer tools: nothing on the line imports them."""
