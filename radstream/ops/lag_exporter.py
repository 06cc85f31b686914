"""Consumer-group lag as Prometheus metrics, read from the brokers on every scrape.

Works for every group (inference workers, sinks, aggregator, dispatcher) without any change in
them: it asks the brokers for committed offsets and partition ends, like ``radstream status``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radstream.ops.status import group_status
from radstream.settings import Settings

log = logging.getLogger(__name__)


class GroupLagCollector(Collector):
    def __init__(self, settings: Settings, groups: list[str] | None = None) -> None:
        self.settings = settings
        self.groups = groups

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("radstream_consumer_group_lag", "messages a group is behind, per partition",
                                labels=["group", "topic", "partition"])
        members = GaugeMetricFamily("radstream_consumer_group_members", "members of each consumer group",
                                    labels=["group"])
        ok = GaugeMetricFamily("radstream_lag_exporter_up", "1 when the last broker query succeeded")
        try:
            for g in group_status(self.settings, self.groups, timeout=5.0):
                members.add_metric([g.group_id], len(g.members))
                for p in g.partitions:
                    lag.add_metric([g.group_id, p.topic, str(p.partition)], p.lag)
            ok.add_metric([], 1)
        except Exception as exc:  # a broker outage shows as up=0, never as a failed scrape
            log.warning("lag exporter: %s", exc)
            ok.add_metric([], 0)
        yield lag
        yield members
        yield ok
