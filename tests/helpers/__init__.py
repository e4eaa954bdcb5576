"""Test helpers that are not fixtures (fixtures live in the ``conftest.py`` files).

- ``api``: the test model's ids, multipart uploads, a training call, raw HTTP/1.1 over a
  socket, a live server's handle and a free port.
- ``api_requests``: every operation of the OpenAPI schema as a request to send.
- ``consumer``: the consumer under test's settings and group options, a calibrated model
  (``Trained``, ``train_model``), its batcher's log lines.
- ``deploy``: loaders for compose, Kubernetes manifests, the Dockerfile and the command line.
- ``fakes``: a Kafka record with good headers, a model and a store that counts loads.
- ``images``: synthetic disc ROIs (PNG, JPEG), random and noise images, textures.
- ``kafka``: the test broker and topics, producing frames and reading verdicts over the
  wire, committed offsets, a camera producer.
- ``malformed``: malformed (and odd but valid) frames with their dead-letter class.
- ``parts``: inspection plans, frame verdicts and a changelog for the part aggregator.
- ``part_line``: the line of the part scenario (S22): a six-ROI plan, the frames of many
  parts as cameras send them, the part rules as an oracle, ``bdi trace`` processes.
- ``paths``: the repository root.
- ``probes``: process memory, latency percentiles, a topic follower, ``ProductBug``.
- ``processes``: a ``bdi consume`` subprocess and its settings, whether a pid is alive.
- ``report``: the reliability figures (one JSON line each) and their Markdown table.
- ``settings``: the smallest real engine configuration (``TINY``, ``tiny_settings``).
- ``store``: a trained model with its files, settings rooted at a store.
"""
