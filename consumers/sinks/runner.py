"""The loop every PostgreSQL sink runs: poll a batch, write it in one transaction, then commit offsets.

- Offsets are committed only after the database commit, so a crash anywhere re-delivers
  what was not yet durable; the writers are idempotent, so re-delivery changes nothing.
- A poison event (undecodable, of the wrong type, or refused by the database) goes to the
  dead-letter topic and the sink carries on; one bad event never blocks its batch.
- A database outage pauses the assigned partitions (the consumer keeps polling so it stays
  in its group), retries with exponential back-off, and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from confluent_kafka import KafkaException

from radstream.db.connect import connect
from radstream.db.staging import forget
from radstream.events.models import Event
from radstream.kafka.consumer import EventConsumer, Received
from radstream.kafka.deadletter import DeadLetters
from radstream.kafka.producer import EventProducer
from radstream.observability import Observability, seconds_since
from radstream.settings import Settings

log = logging.getLogger(__name__)

# errors that mean "the database is not there right now", not "this data is bad"
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


class Rows(Protocol):
    def add(self, event: Event) -> None: ...

    def count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """What makes one sink: its name, topics, and how a batch of events becomes rows and is written."""

    name: str
    topics: tuple[str, ...]
    new_rows: Callable[[], Rows]
    write: Callable[[psycopg.Connection[Any], Any], None]

    def group_id(self, settings: Settings) -> str:
        return f"{settings.kafka.topic_prefix}.sink.{self.name}"


@dataclass(slots=True)
class SinkStats:
    events: int = 0
    rows: int = 0
    batches: int = 0
    dead_lettered: int = 0
    outages: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class SinkStopped(Exception):
    """The sink was asked to stop while a batch was still unwritten (it will be re-delivered)."""


class SinkRunner:
    obs: Observability | None = None
    """Set before :meth:`run` to serve /metrics and health (a beat per poll, counts per committed batch)."""

    def __init__(
        self,
        settings: Settings,
        spec: SinkSpec,
        *,
        consumer: EventConsumer | None = None,
        producer: EventProducer | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.cfg = settings.sinks
        self.consumer = consumer or EventConsumer(settings, spec.group_id(settings), list(spec.topics),
                                                  client_id=f"radstream-sink-{spec.name}")
        self.producer = producer or EventProducer(settings, f"radstream-sink-{spec.name}-dlq")
        self.dead_letters = DeadLetters(self.producer, f"radstream-sink-{spec.name}")
        self.stats = SinkStats()
        self.stop_event = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._paused = False
        self._handled: set[int] = set()  # messages of the current batch already dead-lettered or written
        self._dead: set[int] = set()  # messages of the current batch dead-lettered (for the metrics)

    # -- database connection ---------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, autocommit=True, application_name=f"radstream-sink-{self.spec.name}")
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            forget(self._conn)
            with contextlib.suppress(Exception):  # closing a broken connection may fail in many ways
                self._conn.close()
        self._conn = None

    # -- the loop ------------------------------------------------------------------------------
    def run(self, max_idle_s: float | None = None) -> SinkStats:
        """Consume until ``stop()`` (or until idle for ``max_idle_s``, for batch jobs and tests)."""
        log.info("sink %s consuming %s as group %s", self.spec.name, ",".join(self.spec.topics),
                 self.spec.group_id(self.settings))
        idle_since = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.step():
                    idle_since = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - idle_since >= max_idle_s:
                    break
        except SinkStopped:
            log.info("sink %s stopped with a batch unwritten; it will be re-delivered", self.spec.name)
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()

    def step(self) -> int:
        """Poll one batch, write it, commit it; returns how many messages it handled."""
        if self.obs is not None:
            self.obs.beat()
        batch = self.consumer.poll_batch(self.cfg.batch_size, self.cfg.poll_timeout_s)
        if not batch:
            return 0
        self._dead.clear()
        self._write_with_retry(batch)
        try:
            self.consumer.commit(batch)
        except KafkaException as exc:
            # partitions moved to another member during the write: it re-delivers, writes are idempotent
            log.warning("sink %s: offset commit failed (%s); the batch will be re-delivered", self.spec.name, exc)
        if self.obs is not None:
            self._observe(batch)
        return len(batch)

    def _observe(self, batch: list[Received]) -> None:
        """Metrics of a durable batch: consumed per topic; written per pipeline, with end-to-end latency."""
        assert self.obs is not None
        m = self.obs.consumer_metrics()
        for r in batch:
            m.consumed_event(r.topic)
            if r.event is None or id(r) in self._dead:
                continue
            m.outcome(str(getattr(r.event, "pipeline", "") or ""), "written",
                      end_to_end_s=seconds_since(getattr(r.event, "last_received_at", None)))

    def _write_with_retry(self, batch: list[Received]) -> None:
        delay = self.cfg.retry_initial_s
        self._handled.clear()
        while True:
            try:
                self._write(batch)
                break
            except OUTAGE_ERRORS as exc:
                self._drop_connection()
                self.stats.outages += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("sink %s: database unavailable (%s); consumption paused, retrying in %.1fs",
                            self.spec.name, type(exc).__name__, delay)
                self._pause()
                more = self._wait(delay)
                batch.extend(more)
                delay = min(delay * 2, self.cfg.retry_max_s)
        if self._paused:
            self._resume()

    def _write(self, batch: list[Received]) -> None:
        """Write ``batch`` in one transaction; isolate and dead-letter the events the database refuses."""
        rows = self.spec.new_rows()
        good: list[Received] = []
        for r in batch:
            if id(r) in self._handled:
                continue
            if r.error is not None or r.event is None:
                self._dead_letter(r, r.error or ValueError("no event"))
                continue
            try:
                rows.add(r.event)
                good.append(r)
            except (ValueError, TypeError) as exc:
                self._dead_letter(r, exc)
                # rows may hold part of the bad event: rebuild from the good ones
                rows = self.spec.new_rows()
                for g in good:
                    rows.add(g.event)  # type: ignore[arg-type]
        if not good:
            return
        conn = self._connection()
        try:
            self.spec.write(conn, rows)
            self._count(len(good), rows.count())
            return
        except OUTAGE_ERRORS:
            raise
        except psycopg.Error as exc:
            log.warning("sink %s: batch of %d refused (%s); writing one by one", self.spec.name, len(good),
                        type(exc).__name__)
        for r in good:
            one = self.spec.new_rows()
            one.add(r.event)  # type: ignore[arg-type]
            try:
                self.spec.write(conn, one)
                self._count(1, one.count())
            except OUTAGE_ERRORS:
                raise
            except psycopg.Error as exc:
                self._dead_letter(r, exc)
        # a retry after an outage must not write again what was written one by one here: all done
        self._handled.update(id(r) for r in good)

    def _count(self, events: int, rows: int) -> None:
        self.stats.events += events
        self.stats.rows += rows
        self.stats.batches += 1

    def _dead_letter(self, r: Received, exc: BaseException) -> None:
        if id(r) in self._handled:
            return
        self.dead_letters.from_message(r, exc)
        self._handled.add(id(r))
        self._dead.add(id(r))
        self.stats.dead_lettered += 1
        if self.obs is not None:
            self.obs.consumer_metrics().deadlettered()

    # -- pausing while the database is away --------------------------------------------------
    def _pause(self) -> None:
        assignment = self.consumer.raw.assignment()
        if assignment:
            self.consumer.raw.pause(assignment)
        self._paused = True

    def _resume(self) -> None:
        assignment = self.consumer.raw.assignment()
        if assignment:
            self.consumer.raw.resume(assignment)
        self._paused = False
        log.info("sink %s: database back; consumption resumed", self.spec.name)

    def _wait(self, seconds: float) -> list[Received]:
        """Stay in the group while paused; keep whatever arrives (newly assigned partitions)."""
        deadline = time.monotonic() + seconds
        extra: list[Received] = []
        while True:
            if self.obs is not None:
                self.obs.beat()  # alive while the database is away (readiness says it is not ready)
            if self.stop_event.is_set():
                raise SinkStopped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return extra
            got = self.consumer.poll_batch(self.cfg.batch_size, min(remaining, 0.5))
            if got:
                extra.extend(got)
                self._pause()

    def close(self) -> None:
        self._drop_connection()
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)
