"""The loop every PostgreSQL sink runs: poll a batch, write it, then commit offsets.

A batch is written in one transaction (the results sink uses two: the rows sink replicas
share, then the batch's own; see ``radstream.db.results_writer``).

- Offsets are committed only after the database commit, so a crash anywhere re-delivers
  what was not yet durable; the writers are idempotent, so re-delivery changes nothing.
- A poison event (undecodable, of the wrong type, or refused by the database) goes to the
  dead-letter topic and the sink carries on; one bad event never blocks its batch.
- A database outage pauses the assigned partitions (the consumer keeps polling so it stays
  in its group), retries with exponential back-off, and resumes where it stopped.
- While one batch is written (on a writer thread, the only user of the connection), the
  next one is polled, decoded and turned into rows on the consumer's thread, so Python work
  and database work overlap. Batches are written and committed strictly in order, and the
  one read ahead always lies after the one written, so committing the written batch's
  offsets never covers an unwritten message; on an outage the read-ahead batch joins the
  batch being retried (one transaction) before anything newer is polled. A written batch's
  offsets are committed while the next batch is written (its database commit came first),
  or by the next idle poll, or on close.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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

# a write rolled back for a deadlock/serialization failure is tried again this many times in all
TRANSIENT_ATTEMPTS = 5
# errors that mean "the database is not there right now", not "this data is bad"
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


class Rows(Protocol):
    def add(self, event: Event) -> None: ...

    def count(self) -> int: ...

    def seal(self) -> object:
        """Work out, before the write, whatever needs no database (called on the consumer's thread)."""
        ...


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """What makes one sink: its name, topics, and how a batch of events becomes rows and is written."""

    name: str
    topics: tuple[str, ...]
    new_rows: Callable[[], Rows]
    write: Callable[[psycopg.Connection[Any], Any], None]
    prepare: Callable[[psycopg.Connection[Any]], None] | None = None
    """Sets up a new connection before its first write (staging tables, type lookups)."""

    def group_id(self, settings: Settings) -> str:
        return f"{settings.kafka.topic_prefix}.sink.{self.name}"


@dataclass(slots=True)
class SinkStats:
    events: int = 0
    rows: int = 0
    batches: int = 0
    dead_lettered: int = 0
    outages: int = 0
    conflicts: int = 0  # writes rolled back by a deadlock or serialization failure, then retried
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(slots=True)
class _Batch:
    """One batch of messages and what became of them (written, dead-lettered, turned into rows)."""

    received: list[Received]
    handled: set[int] = field(default_factory=set)  # ids already dead-lettered or written one by one
    dead: set[int] = field(default_factory=set)  # ids dead-lettered (for the metrics)
    rows: Rows | None = None  # rows of received[:prepared], minus the handled ones
    good: list[Received] = field(default_factory=list)  # the messages those rows came from
    prepared: int = 0

    def extend(self, more: list[Received]) -> None:
        self.received.extend(more)


def tune_interpreter(young_threshold: int = 10_000, switch_interval_s: float = 0.001) -> None:
    """Make the interpreter's own overheads small for a sink process (process-wide, idempotent).

    - Garbage collector: a batch allocates tens of thousands of short-lived objects (decoded
      events, rows) that reference counting frees when the batch is done; with the default
      thresholds the collector runs every 700 allocations and its older passes walk every
      long-lived object of the process again and again (a fifth of the sink's CPU time). The
      objects alive now (modules, settings, clients) are frozen out of the collector and the
      young generation is collected less often.
    - Thread switches: the writer thread streams COPY data while the consumer's thread decodes
      the next batch; with the default 5 ms GIL slices the writer leaves PostgreSQL without
      data for whole slices, 1 ms keeps it fed.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < young_threshold:
        gc.set_threshold(young_threshold, middle, old)
    if sys.getswitchinterval() > switch_interval_s:
        sys.setswitchinterval(switch_interval_s)


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
        tune_interpreter()
        self.consumer = consumer or EventConsumer(settings, spec.group_id(settings), list(spec.topics),
                                                  client_id=f"radstream-sink-{spec.name}")
        self.producer = producer or EventProducer(settings, f"radstream-sink-{spec.name}-dlq")
        self.dead_letters = DeadLetters(self.producer, f"radstream-sink-{spec.name}")
        self.stats = SinkStats()
        self.stop_event = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None  # used by the writer thread only
        self._paused = False
        self._ahead: _Batch | None = None  # read (and turned into rows) while the previous batch was written
        self._written: _Batch | None = None  # written to the database, offsets not yet committed
        # connect (and set the connection up) on the writer thread while the consumer joins its group
        self._writer: ThreadPoolExecutor | None = ThreadPoolExecutor(
            1, thread_name_prefix=f"sink-{spec.name}-writer")
        self._writer.submit(self._warm_up)

    # -- database connection ---------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = connect(self.settings, autocommit=True, application_name=f"radstream-sink-{self.spec.name}")
            try:
                if self.spec.prepare is not None:
                    self.spec.prepare(conn)
            except BaseException:
                forget(conn)
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _warm_up(self) -> None:
        """(Writer thread) the connection, ready before the first batch; if the database is not
        there yet, the first write finds out and waits for it as for any outage."""
        try:
            self._connection()
        except psycopg.Error as exc:  # OUTAGE_ERRORS among them
            log.info("sink %s: database not ready at start (%s); the first write will retry", self.spec.name,
                     type(exc).__name__)

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
        """Write one batch (reading the next meanwhile); returns how many messages it handled.

        The batch's offsets are committed while the next batch is written (or by the next
        step, or by :meth:`commit_written`), always after the batch's database commit.
        """
        if self.obs is not None:
            self.obs.beat()
        batch, self._ahead = self._ahead, None
        if batch is None:
            # the writer is idle meanwhile: a bounded first batch, so the database starts soon; what
            # else has arrived is read while it is written (batches grow to batch_size on a backlog)
            batch = _Batch(self.consumer.poll_batch(self._chunk(), self.cfg.poll_timeout_s))
        if not batch.received:
            self.commit_written()
            return 0
        self._write_with_retry(batch)
        self._written = batch
        if self.obs is not None:
            self._observe(batch)
        return len(batch.received)

    def commit_written(self) -> None:
        """Commit the offsets of the last batch written to the database, if not done yet."""
        batch, self._written = self._written, None
        if batch is None:
            return
        try:
            self.consumer.commit(batch.received)
        except KafkaException as exc:
            # partitions moved to another member meanwhile: it re-delivers, writes are idempotent
            log.warning("sink %s: offset commit failed (%s); the batch will be re-delivered", self.spec.name, exc)

    def _observe(self, batch: _Batch) -> None:
        """Metrics of a durable batch: consumed per topic; written per pipeline, with end-to-end latency."""
        assert self.obs is not None
        m = self.obs.consumer_metrics()
        for r in batch.received:
            m.consumed_event(r.topic)
            if r.event is None or id(r) in batch.dead:
                continue
            m.outcome(str(getattr(r.event, "pipeline", "") or ""), "written",
                      end_to_end_s=seconds_since(getattr(r.event, "last_received_at", None)))

    def _write_with_retry(self, batch: _Batch) -> None:
        delay = self.cfg.retry_initial_s
        while True:
            try:
                self._write_reading_ahead(batch)
                break
            except OUTAGE_ERRORS as exc:
                self._drop_connection()
                with self.stats._lock:
                    self.stats.outages += 1
                    self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("sink %s: database unavailable (%s); consumption paused, retrying in %.1fs",
                            self.spec.name, type(exc).__name__, delay)
                self._pause()
                # what was read ahead joins this batch before anything newer: the offsets committed
                # after the retry must not pass a message that is not yet written
                if self._ahead is not None:
                    batch.extend(self._ahead.received)
                    batch.handled |= self._ahead.handled
                    batch.dead |= self._ahead.dead
                    self._ahead = None
                batch.extend(self._wait(delay))
                batch.rows = None  # rebuilt on the retry, without what was already handled
                delay = min(delay * 2, self.cfg.retry_max_s)
        if self._paused:
            self._resume()

    def _write_reading_ahead(self, batch: _Batch) -> None:
        """Write ``batch`` on the writer thread; meanwhile read the next batch and turn it into rows."""
        self._prepare(batch)
        if not batch.good:
            self.commit_written()
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"sink-{self.spec.name}-writer")
        assert batch.rows is not None
        batch.rows.seal()
        done: Future[None] = self._writer.submit(self._write, batch)
        self.commit_written()  # the previous batch's offsets, while this one is written
        while not done.done():
            ahead = self._ahead
            room = self.cfg.batch_size - (len(ahead.received) if ahead is not None else 0)
            if room <= 0 or self._paused:
                if ahead is not None and ahead.rows is not None:
                    ahead.rows.seal()  # while the database is still busy with the write
                done.exception()  # wait for the write (exceptions are raised below)
                break
            # a write is in flight: fill the read-ahead chunk by chunk, blocked in librdkafka (not
            # holding the interpreter the writer thread needs) while waiting; small chunks, so a
            # finished write waits for one chunk at most before the next batch goes
            got = self.consumer.poll_batch(min(room, self.cfg.read_ahead_chunk), min(self.cfg.poll_timeout_s, 0.02),
                                           fill=True)
            if got:
                if ahead is None:
                    ahead = self._ahead = _Batch(got)
                else:
                    ahead.extend(got)
                self._prepare(ahead)
        done.result()

    def _chunk(self) -> int:
        """Most messages in a first batch (see ``SinkSettings.start_batch_size``)."""
        return min(self.cfg.start_batch_size, self.cfg.batch_size)

    def _prepare(self, batch: _Batch) -> None:
        """Turn the not yet prepared messages of ``batch`` into rows; dead-letter those that cannot be stored."""
        if batch.rows is None:
            batch.rows, batch.good, batch.prepared = self.spec.new_rows(), [], 0
        rows = batch.rows
        for r in batch.received[batch.prepared:]:
            if id(r) in batch.handled:
                continue
            if r.error is not None or r.event is None:
                self._dead_letter(batch, r, r.error or ValueError("no event"))
                continue
            try:
                rows.add(r.event)
                batch.good.append(r)
            except (ValueError, TypeError) as exc:
                self._dead_letter(batch, r, exc)
                # rows may hold part of the bad event: rebuild from the good ones
                rows = batch.rows = self.spec.new_rows()
                for g in batch.good:
                    rows.add(g.event)  # type: ignore[arg-type]
        batch.prepared = len(batch.received)

    def _write(self, batch: _Batch) -> None:
        """(Writer thread) write ``batch`` in one transaction; isolate and dead-letter what the database refuses."""
        assert batch.rows is not None
        good = batch.good
        conn = self._connection()
        try:
            self._write_rows(conn, batch.rows)
            self._count(len(good), batch.rows.count())
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
                self._write_rows(conn, one)
                self._count(1, one.count())
            except OUTAGE_ERRORS:
                raise
            except psycopg.Error as exc:
                self._dead_letter(batch, r, exc)
        # a retry after an outage must not write again what was written one by one here: all done
        batch.handled.update(id(r) for r in good)

    def _write_rows(self, conn: psycopg.Connection[Any], rows: Rows) -> None:
        """``spec.write``, again at once when the database rolled it back for a deadlock or a
        serialization failure with another writer (sink replicas share parent rows): a
        transient conflict, not an outage and not bad data."""
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                self.spec.write(conn, rows)
                return
            except psycopg.errors.TransactionRollback as exc:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                with self.stats._lock:
                    self.stats.conflicts += 1
                log.info("sink %s: write rolled back (%s), attempt %d; writing again", self.spec.name,
                         type(exc).__name__, attempt)
                time.sleep(random.uniform(0.0, 0.02 * attempt))  # let the other writer finish first

    def _count(self, events: int, rows: int) -> None:
        with self.stats._lock:
            self.stats.events += events
            self.stats.rows += rows
            self.stats.batches += 1

    def _dead_letter(self, batch: _Batch, r: Received, exc: BaseException) -> None:
        if id(r) in batch.handled:
            return
        self.dead_letters.from_message(r, exc)
        batch.handled.add(id(r))
        batch.dead.add(id(r))
        with self.stats._lock:
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
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._ahead = None  # read but not written: its offsets were not committed, it is re-delivered
        self._drop_connection()
        try:
            self.commit_written()
            self.consumer.close()
        finally:
            self.producer.flush(10)
