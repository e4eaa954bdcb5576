"""A synthetic line for tests, benchmarks and the demo: synthetic brake discs (``discs``), a
camera that publishes them to Kafka (``camera``) and ``bdi demo``. Nothing on the line
imports it."""
