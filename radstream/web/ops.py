"""Figures of the operations page: event counts, results, consumer lag, latency, failures."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg.rows import dict_row

from radstream.kafka.config import base_config
from radstream.settings import Settings

log = logging.getLogger(__name__)

COUNTED_TOPICS = ("instances", "series", "studies", "results", "feedback", "deadletter")


@dataclass(slots=True)
class GroupLag:
    group: str
    lag: int
    partitions: int
    topics: list[str] = field(default_factory=list)


@dataclass(slots=True)
class KafkaFigures:
    ok: bool
    error: str | None = None
    topic_counts: dict[str, int] = field(default_factory=dict)
    lags: list[GroupLag] = field(default_factory=list)


class KafkaOps:
    """Reads watermarks and committed offsets; cached for a few seconds; fails soft when Kafka is away."""

    def __init__(self, settings: Settings, timeout_s: float = 3.0, ttl_s: float = 3.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, KafkaFigures] | None = None
        self._admin: AdminClient | None = None
        self._consumer: Consumer | None = None

    def _clients(self) -> tuple[AdminClient, Consumer]:
        if self._admin is None or self._consumer is None:
            conf = base_config(self.settings, "radstream-web-ops")
            self._admin = AdminClient(conf)
            self._consumer = Consumer({**conf, "group.id": "radstream-web-ops-watermarks",
                                       "enable.auto.commit": False})
        return self._admin, self._consumer

    def figures(self) -> KafkaFigures:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            try:
                fig = self._read()
            except (KafkaException, RuntimeError) as exc:
                fig = KafkaFigures(ok=False, error=f"Kafka unavailable ({type(exc).__name__})")
            self._cached = (time.monotonic(), fig)
            return fig

    def _high_low(self, consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
        lo, hi = consumer.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
        return int(lo), int(hi)

    def _read(self) -> KafkaFigures:
        admin, consumer = self._clients()
        md = admin.list_topics(timeout=self.timeout_s)
        fig = KafkaFigures(ok=True)
        highs: dict[tuple[str, int], int] = {}
        for short in COUNTED_TOPICS:
            name = self.settings.topic(short)
            t = md.topics.get(name)
            if t is None or t.error is not None:
                continue
            total = 0
            for p in t.partitions:
                lo, hi = self._high_low(consumer, TopicPartition(name, p))
                highs[(name, p)] = hi
                total += hi - lo
            fig.topic_counts[short] = total
        groups = admin.list_consumer_groups(request_timeout=self.timeout_s).result(timeout=self.timeout_s)
        prefix = self.settings.kafka.topic_prefix
        ids = sorted(g.group_id for g in groups.valid if g.group_id.startswith(prefix) or "radstream" in g.group_id)
        for gid in ids[:50]:
            futs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(gid)],
                                                     request_timeout=self.timeout_s)
            res = futs[gid].result(timeout=self.timeout_s)
            lag, parts, topics = 0, 0, set()
            for tp in res.topic_partitions or []:
                if tp.offset < 0:
                    continue
                key = (tp.topic, tp.partition)
                if key not in highs:
                    highs[key] = self._high_low(consumer, TopicPartition(tp.topic, tp.partition))[1]
                hi = highs[key]
                lag += max(hi - tp.offset, 0)
                parts += 1
                topics.add(tp.topic)
            fig.lags.append(GroupLag(gid, lag, parts, sorted(topics)))
        return fig

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def db_figures(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Per-pipeline result counts and turnaround percentiles (last 24 h and all time), recent failures."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT p.pipeline,
                      (SELECT count(*) FROM requests q WHERE q.pipeline = p.pipeline) AS requests,
                      count(*) FILTER (WHERE r.status = 'completed') AS completed,
                      count(*) FILTER (WHERE r.status = 'failed') AS failed,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.stored_at - r.last_received_at))
                          FILTER (WHERE r.status = 'completed') AS p50_s,
                      percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM r.stored_at - r.last_received_at))
                          FILTER (WHERE r.status = 'completed') AS p90_s,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.stored_at - r.last_received_at))
                          FILTER (WHERE r.status = 'completed') AS p99_s,
                      count(*) FILTER (WHERE r.stored_at > now() - interval '1 hour') AS last_hour
               FROM (SELECT name AS pipeline FROM pipelines UNION SELECT pipeline FROM results) p
               LEFT JOIN results r ON r.pipeline = p.pipeline AND NOT r.shadow
               GROUP BY p.pipeline ORDER BY p.pipeline""")
        pipelines = list(cur.fetchall())
        cur.execute("""SELECT pipeline, stage, reason, finished_at, result_id FROM results WHERE status = 'failed'
                       ORDER BY finished_at DESC LIMIT 20""")
        failures = list(cur.fetchall())
        cur.execute("""SELECT (SELECT count(*) FROM reviews) AS reviews, (SELECT count(*) FROM qc_decisions) AS qc,
                              (SELECT count(*) FROM studies) AS studies, (SELECT count(*) FROM series) AS series""")
        totals = cur.fetchone() or {}
    return {"pipelines": pipelines, "failures": failures, "totals": totals}
