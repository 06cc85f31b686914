"""Prometheus metrics and health endpoints shared by every radstream process.

Usage in a process (one call to build, one to start, a beat per loop turn)::

    from radstream.observability import Observability, kafka_ready, postgres_ready

    obs = Observability.for_component(settings, "infer", labels={"pipeline": name})
    obs.add_readiness_check("kafka", kafka_ready(settings))
    obs.add_readiness_check("postgres", postgres_ready(settings))
    obs.start()                      # serves /metrics, /healthz, /readyz on observability.ports[component]
    m = obs.consumer_metrics()       # standard consumer-loop metrics (optional)
    while running:
        obs.beat()                   # liveness: /healthz fails once the beat is older than liveness_stale_s
        ...
    obs.stop()

Define process-specific metrics on ``obs.registry``. Labels never carry PHI: pipeline,
component, topic, outcome, stage only.
"""

from radstream.observability.checks import http_ready, kafka_ready, postgres_ready, triton_ready
from radstream.observability.metrics import LATENCY_BUCKETS, ConsumerMetrics, seconds_since
from radstream.observability.server import CheckResult, Observability

__all__ = [
    "LATENCY_BUCKETS",
    "CheckResult",
    "ConsumerMetrics",
    "Observability",
    "http_ready",
    "kafka_ready",
    "postgres_ready",
    "seconds_since",
    "triton_ready",
]
