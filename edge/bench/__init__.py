"""Benchmarks that print JSON: the engine against its backbone (``bdi bench engine``), the
consumer group on a broker (``bdi bench pipeline``) and the CUDA path (``gpu_check``).
Developer tools: nothing on the line imports them."""
