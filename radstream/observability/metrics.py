"""Standard metrics of a consumer loop, shared so dashboards chart every process the same way.

Names (labels): ``radstream_events_consumed_total`` (component, topic),
``radstream_events_processed_total`` (component, pipeline, outcome),
``radstream_processing_seconds`` (component, pipeline) — one event's effect,
``radstream_end_to_end_seconds`` (component, pipeline) — last instance received to result,
``radstream_events_produced_total`` (component, topic) — events a step emitted,
``radstream_deadletters_total`` (component), ``radstream_consumer_lag`` (component, topic, partition).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, component: str) -> None:
        self.component = component
        r = registry
        self.consumed = Counter("radstream_events_consumed_total", "events read from Kafka",
                                ["component", "topic"], registry=r)
        self.processed = Counter("radstream_events_processed_total", "events handled, by outcome",
                                 ["component", "pipeline", "outcome"], registry=r)
        self.processing_seconds = Histogram("radstream_processing_seconds", "time to handle one event",
                                            ["component", "pipeline"], buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("radstream_end_to_end_seconds",
                                            "from the study's last received instance to this step's effect",
                                            ["component", "pipeline"], buckets=LATENCY_BUCKETS, registry=r)
        self.produced = Counter("radstream_events_produced_total", "events written to Kafka, by topic",
                                ["component", "topic"], registry=r)
        self.deadletters = Counter("radstream_deadletters_total", "events sent to the dead-letter topic",
                                   ["component"], registry=r)
        self.lag = Gauge("radstream_consumer_lag", "messages behind the end of each assigned partition",
                         ["component", "topic", "partition"], registry=r)

    def consumed_event(self, topic: str, n: int = 1) -> None:
        self.consumed.labels(self.component, topic).inc(n)

    def outcome(self, pipeline: str, outcome: str, seconds: float | None = None,
                end_to_end_s: float | None = None) -> None:
        self.processed.labels(self.component, pipeline, outcome).inc()
        if seconds is not None:
            self.processing_seconds.labels(self.component, pipeline).observe(seconds)
        if end_to_end_s is not None:
            self.end_to_end_seconds.labels(self.component, pipeline).observe(end_to_end_s)

    def produced_event(self, topic: str, n: int = 1) -> None:
        self.produced.labels(self.component, topic).inc(n)

    def deadlettered(self, n: int = 1) -> None:
        self.deadletters.labels(self.component).inc(n)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(self.component, topic, str(partition)).set(lag)


def seconds_since(when: datetime | None) -> float | None:
    """Seconds from ``when`` (naive = UTC) to now; None when unknown (for ``end_to_end_s``)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - when).total_seconds())
