"""Prometheus metrics of the ingest SCP (no PHI in any label: AE titles and statuses only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from radstream.observability import Observability
from radstream.settings import Settings

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, labels: dict[str, str] | None = None) -> None:
        """``labels``: constant labels of this process's info metric (e.g. a pool process's ``slot``)."""
        self.registry = registry or CollectorRegistry()
        self.labels = dict(labels or {})
        r = self.registry
        self.instances = Counter(
            "radstream_ingest_instances_total", "instances stored and acknowledged", ["called_ae"], registry=r
        )
        self.bytes = Counter("radstream_ingest_bytes_total", "bytes of instances stored", ["called_ae"], registry=r)
        self.duplicates = Counter(
            "radstream_ingest_duplicate_instances_total", "instances whose bytes were already stored", registry=r
        )
        self.failures = Counter(
            "radstream_ingest_failures_total", "C-STORE requests answered with a failure", ["status"], registry=r
        )
        self.echoes = Counter("radstream_ingest_echo_total", "C-ECHO requests answered", registry=r)
        self.associations = Counter(
            "radstream_ingest_associations_total", "associations by outcome", ["outcome"], registry=r
        )
        self.store_seconds = Histogram(
            "radstream_ingest_store_seconds", "check, hash, fsync and link of one instance",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.publish_seconds = Histogram(
            "radstream_ingest_publish_seconds", "until Kafka acked the event or the outbox held it",
            ["path"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.outbox_depth = Gauge("radstream_ingest_outbox_depth", "events waiting in the outbox", registry=r)
        self.deadletters = Counter("radstream_ingest_deadletters_total", "dead letters written", registry=r)

    def observability(self, settings: Settings) -> Observability:
        """These metrics on the shared /metrics, /healthz, /readyz endpoint (not started yet).

        Port: ``ingest.metrics_port`` when set (0 = off), else ``observability.ports.ingest``.
        """
        i = settings.ingest
        return Observability.for_component(settings, "ingest", labels=self.labels or None, registry=self.registry,
                                           port=i.metrics_port, address=i.metrics_address)
