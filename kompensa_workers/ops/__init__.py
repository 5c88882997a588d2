"""Operating sagas: the ``kompensa-workers`` command, operator writes as pure
journal functions, the timeline, the demo, and the OpenTelemetry and Prometheus
hooks (``from kompensa_workers import otel, metrics``)."""
