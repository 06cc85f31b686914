"""A consume-transform-produce loop with per-partition state, exactly once through Kafka transactions.

The shape (the same design as faust tables, without faust; see the package README):

- input topics keyed by patient key, co-partitioned (``range`` assignment keeps partition *p*
  of every input topic on one worker);
- the state of partition *p* lives in memory and in partition *p* of a compacted changelog
  topic; on assignment it is restored by reading that changelog partition to its end;
- each batch is one transaction: the output events, the changelog records of what changed
  and the consumed offsets (with the group metadata, so a worker that lost its partitions
  in a rebalance is fenced and cannot commit);
- the timer runs in the same thread between batches, so it mutates state only inside a
  transaction, the same guarantee faust's "no table writes outside stream iteration" gives;
- no timer fires for a partition until the backlog that was there at assignment is read, so
  a restarted worker does not close a series whose later instances are still in the topic;
- on any transaction failure the state of the assigned partitions is thrown away and
  restored from the changelog, and the consumer is put back to the committed offsets;
- after a disruption (the broker unreachable, a failed transaction, or a restart that finds
  deadlines already passed) timers wait ``recovery_grace_s`` more, so that what producers held
  back during the outage (an SCP's outbox) arrives before anything closes.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import NewTopic
from radstream.stream_apps.txn_watchdog import TxnWatchdog

from radstream.events.codec import codec_for
from radstream.events.models import Event
from radstream.events.serde import Codec, DecodeError
from radstream.kafka.available import consume_available
from radstream.kafka.config import base_config
from radstream.kafka.consumer import Received
from radstream.kafka.deadletter import DeadLetters
from radstream.kafka.producer import EventProducer
from radstream.kafka.topics import admin, durability_config
from radstream.kafka.transient import retry_transient
from radstream.observability import Observability
from radstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What one batch or timer tick produces: events for topics and changelog records."""

    events: list[tuple[str, str, Event]] = field(default_factory=list)  # (topic, key, event)
    changelog: list[tuple[int, str, bytes | None]] = field(default_factory=list)  # (partition, key, value)

    def __bool__(self) -> bool:
        return bool(self.events or self.changelog)


def ensure_changelog(settings: Settings, topic: str, like: str, timeout: float = 30.0) -> int:
    """Create the compacted changelog topic with as many partitions as ``like``; returns that count."""
    client = admin(settings)
    md = retry_transient("topic metadata", functools.partial(client.list_topics, timeout=timeout))
    if like not in md.topics:
        raise RuntimeError(f"input topic {like} does not exist (run `radstream topics create`)")
    n = len(md.topics[like].partitions)
    if topic not in md.topics:
        fut = client.create_topics([NewTopic(topic, n, settings.kafka.replication_factor, config={
            "cleanup.policy": "compact", "retention.ms": "-1", "min.compaction.lag.ms": "0",
            "segment.ms": str(3600 * 1000), **durability_config(settings)})], operation_timeout=timeout)[topic]
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return n


def read_changelog(settings: Settings, topic: str, partition: int,
                   timeout: float = 30.0) -> Iterator[tuple[str, bytes | None]]:
    """Every committed record of one changelog partition, oldest first."""
    c = Consumer({**base_config(settings, "radstream-restore"), "group.id": f"radstream-restore-{uuid.uuid4()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True, "fetch.max.bytes": 52428800})
    try:
        low, high = retry_transient("changelog watermark offsets", functools.partial(
            c.get_watermark_offsets, TopicPartition(topic, partition), timeout=min(timeout, 10.0)))
        if high <= low:
            return
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while True:
            msgs = c.consume(1000, 1.0)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return
                    raise KafkaException(err)
                key = m.key()
                if key is not None:
                    yield (key.decode() if isinstance(key, bytes) else str(key)), m.value()
            if not msgs and time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic}[{partition}] took over {timeout:.0f}s")
            if msgs:
                deadline = time.monotonic() + timeout
    finally:
        c.close()


class TxLoop:
    """Subclass and implement :meth:`restore`, :meth:`drop`, :meth:`process` and :meth:`tick`."""

    component = "stream-app"
    obs: Observability | None = None
    """Set before :meth:`run` to serve /metrics and health (beat per loop turn, counts per transaction)."""

    def __init__(self, settings: Settings, group_id: str, inputs: list[str], changelog: str,
                 timer_interval_s: float, batch_size: int = 2000, clock: Callable[[], float] = time.time,
                 codec: Codec | None = None, recovery_grace_s: float = 0.0, fill_batches: bool = True) -> None:
        self.settings = settings
        # True: wait (until the next timer tick at most) for batch_size messages, fewer and larger
        # transactions; False: take what has arrived at once (for latency: the dispatcher)
        self.fill_batches = fill_batches
        self.group_id = group_id
        self.inputs = inputs
        self.changelog = changelog
        self.timer_interval_s = timer_interval_s
        self.batch_size = batch_size
        self.clock = clock
        self.codec = codec or codec_for(settings)
        self.partitions = ensure_changelog(settings, changelog, inputs[0])
        self.assigned: set[int] = set()
        self._stash: set[int] = set()
        self._catch_up: dict[tuple[str, int], int] = {}  # backlog end at assignment, not yet reached
        self._needs_reset = False
        self.recovery_grace_s = recovery_grace_s
        self._hold: dict[int, float] = {}  # partition -> no timers before this clock time
        self._broker_down = False
        self._stop = False
        self.processed = 0
        self.consumer = Consumer({
            **base_config(settings, f"{group_id}-{uuid.uuid4().hex[:6]}"),
            "group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
            # never a silent reset: librdkafka can report a committed offset "not available" after a leader
            # change (seen on a 3-broker cluster) and "earliest" would then re-read the whole partition;
            # the loop handles the error itself (_position_lost), and _on_assign starts a partition with no
            # commit at its beginning
            "auto.offset.reset": "error", "isolation.level": "read_committed",
            "partition.assignment.strategy": "range", "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 300000,
            "fetch.wait.max.ms": 100, "enable.partition.eof": True, "error_cb": self._on_client_error,
        })
        self.producer = Producer({
            **base_config(settings, f"{group_id}-tx"), "transactional.id": f"{group_id}-{uuid.uuid4()}",
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4",
            "transaction.timeout.ms": 60000,
        })
        self.producer.init_transactions(30)
        # librdkafka may block a transactional call past its timeout (see txn_watchdog): started by run()
        self.watchdog = TxnWatchdog()
        self.deadletters = DeadLetters(EventProducer(settings, f"{group_id}-dlq"), self.component)

    # -- to implement ----------------------------------------------------------------------
    def restore(self, partition: int, records: Iterator[tuple[str, bytes | None]]) -> None:
        raise NotImplementedError

    def drop(self, partition: int) -> None:
        raise NotImplementedError

    def process(self, batch: list[Received], now: float) -> Output:
        raise NotImplementedError

    def tick(self, partitions: set[int], now: float) -> Output:
        raise NotImplementedError

    def overdue(self, partition: int, now: float) -> bool:
        """Whether restored state of this partition has deadlines already passed (then timers wait
        ``recovery_grace_s`` first). Override where timers act on state."""
        return False

    # -- assignment ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        now_assigned = {tp.partition for tp in parts}
        # eager rebalance: partitions revoked and handed straight back kept their state (nobody
        # else could process them in between, and no transaction is open during a callback)
        for p in self._stash - now_assigned:
            self.drop(p)
            self._hold.pop(p, None)
        for p in sorted(now_assigned - self._stash - self.assigned):
            t0 = time.monotonic()
            self.restore(p, read_changelog(self.settings, self.changelog, p))
            log.info("restored state of partition %d in %.2fs", p, time.monotonic() - t0)
            now = self.clock()
            if self.recovery_grace_s and self.overdue(p, now):
                self._hold[p] = now + self.recovery_grace_s
                log.warning("partition %d: deadlines passed while no worker ran; timers wait %.0fs for "
                            "instances held upstream", p, self.recovery_grace_s)
        self._stash = set()
        self.assigned |= now_assigned
        # a broker still starting (or a busy one) times these out for a while: ask again, not exit
        commits = retry_transient("committed offsets", lambda: consumer.committed(
            [TopicPartition(tp.topic, tp.partition) for tp in parts], timeout=10))
        committed = {(tp.topic, tp.partition): tp.offset for tp in commits}
        # start where committed, a partition with no commit at its beginning (no automatic reset: see the config)
        consumer.assign([self._resume_at(tp) for tp in commits])
        for tp in parts:
            part = TopicPartition(tp.topic, tp.partition)
            low, high = retry_transient("watermark offsets", functools.partial(
                consumer.get_watermark_offsets, part, timeout=10))
            start = committed.get((tp.topic, tp.partition), -1)
            if high > max(start, low):
                self._catch_up[(tp.topic, tp.partition)] = high

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in parts}
        for tp in parts:
            self._catch_up.pop((tp.topic, tp.partition), None)
        self._stash |= gone & self.assigned
        self.assigned -= gone

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in parts}
        for tp in parts:
            self._catch_up.pop((tp.topic, tp.partition), None)
        for p in gone & (self.assigned | self._stash):
            self.drop(p)
            self._hold.pop(p, None)
        self.assigned -= gone
        self._stash -= gone

    def ready_partitions(self, now: float | None = None) -> set[int]:
        """Assigned partitions whose backlog at assignment has been read and that are not held
        after a disruption (timers may fire)."""
        if self._broker_down:
            return set()
        blocked = {p for (_, p), _ in self._catch_up.items()}
        if now is not None:
            blocked |= {p for p, until in self._hold.items() if until > now}
        return self.assigned - blocked

    # -- disruptions -----------------------------------------------------------------------
    def _on_client_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN and not self._broker_down:
            log.warning("all brokers down: timers stop until one is reachable again")
            self._broker_down = True

    def _hold_all(self, now: float) -> None:
        if self.recovery_grace_s:
            for p in self.assigned:
                self._hold[p] = max(self._hold.get(p, 0.0), now + self.recovery_grace_s)

    def _probe_broker(self, now: float) -> None:
        """While the brokers are down: one metadata request per timer interval; back, hold timers."""
        try:
            self.consumer.list_topics(self.inputs[0], timeout=min(2.0, self.timer_interval_s))
        except KafkaException:
            return
        self._broker_down = False
        self._hold_all(now)
        log.warning("broker reachable again%s", f"; timers wait {self.recovery_grace_s:.0f}s for instances held "
                    "upstream" if self.recovery_grace_s else "")

    def _track_catch_up(self) -> None:
        if not self._catch_up:
            return
        tps = [TopicPartition(t, p) for (t, p) in self._catch_up]
        for tp in self.consumer.position(tps):
            if tp.offset >= 0 and tp.offset >= self._catch_up.get((tp.topic, tp.partition), 0):
                self._catch_up.pop((tp.topic, tp.partition), None)

    # -- the loop --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self.consumer.subscribe(self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        next_tick = self.clock()
        self.watchdog.start()
        try:
            while not self._stop and not (until and until()):
                if self.obs is not None:
                    self.obs.beat()
                if self._needs_reset:
                    self._reset()
                wait = max(0.0, min(0.5, next_tick - self.clock()))
                wait = max(wait, 0.005)  # never a busy loop
                msgs = (self.consumer.consume(self.batch_size, wait) if self.fill_batches
                        else consume_available(self.consumer, self.batch_size, wait))
                batch: list[Received] = []
                latest: dict[tuple[str, int], int] = {}  # last offset consumed per input partition
                decode = self.codec.decode
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            self._catch_up.pop((str(m.topic()), int(m.partition())), None)
                        elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                            self._position_lost(m, err)
                        elif err.fatal():
                            raise KafkaException(err)
                        continue
                    latest[(m.topic(), m.partition())] = m.offset()  # in offset order per partition
                    value = m.value()
                    try:
                        if value is None:
                            raise DecodeError("empty message where an event was expected")
                        batch.append(Received(m, decode(value)))
                    except DecodeError as exc:
                        batch.append(Received(m, None, exc))
                now = self.clock()
                self._track_catch_up()
                out = Output()
                if batch:
                    out = self.process(batch, now)
                do_tick = now >= next_tick
                if do_tick and self._broker_down:
                    self._probe_broker(now)
                if do_tick:
                    t_out = self.tick(self.ready_partitions(now), now)
                    out.events += t_out.events
                    out.changelog += t_out.changelog
                    next_tick = now + self.timer_interval_s
                if batch or out:
                    self._commit(batch, latest, out)
                    self.processed += len(batch)
        finally:
            self.close()

    def dead_letter(self, r: Received, exc: BaseException) -> None:
        """Send a poison message to the dead-letter topic (acked before the batch commits)."""
        self.deadletters.from_message(r, exc)
        if self.obs is not None:
            self.obs.consumer_metrics().deadlettered()

    def _position_lost(self, m: Message, err: KafkaError) -> None:
        """The position of a partition is not on its leader (or the partition has no commit yet): state and
        positions back to what was committed, once per loop turn (see _reset)."""
        if not self._needs_reset:
            log.warning("%s[%s]: %s; state and positions back to the last commit", m.topic(), m.partition(),
                        err.str())
        self._needs_reset = True

    def _commit(self, batch: list[Received], latest: dict[tuple[str, int], int], out: Output) -> None:
        """One transaction: ``out`` and the offsets after ``latest`` (the last offset consumed per
        partition; with none, the current positions)."""
        try:
            self.producer.begin_transaction()
            for topic, key, event in out.events:
                self._produce(topic, key, self.codec.encode(event), None,
                              [("event-type", event.SCHEMA_NAME.encode())])
            for partition, key, value in out.changelog:
                self._produce(self.changelog, key, value, partition, None)
            offsets = self._offsets(latest)
            if offsets:
                with self.watchdog.guard("send_offsets_to_transaction", 30):
                    self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30)
            with self.watchdog.guard("commit_transaction", 60):
                self.producer.commit_transaction(60)
            if self.obs is not None:
                self._count(batch, out)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            log.warning("transaction failed (%s); restoring state from the changelog", err)
            if isinstance(err, KafkaError) and err.fatal():
                raise
            try:
                with self.watchdog.guard("abort_transaction", 30):
                    self.producer.abort_transaction(30)
            except KafkaException as abort_exc:
                log.warning("abort failed: %s", abort_exc)
            self._needs_reset = True
            self._hold_all(self.clock())

    def _count(self, batch: list[Received], out: Output) -> None:
        m = self.obs.consumer_metrics() if self.obs is not None else None
        if m is None:
            return
        per_topic: dict[str, int] = {}
        for r in batch:
            t = r.message.topic()
            per_topic[t] = per_topic.get(t, 0) + 1
        for topic, n in per_topic.items():
            m.consumed_event(topic, n)
        for topic, _, _ in out.events:
            m.produced_event(topic)

    def _produce(self, topic: str, key: str, value: bytes | None, partition: int | None,
                 headers: list[tuple[str, bytes]] | None) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value=value, key=key, headers=headers)
                else:
                    self.producer.produce(topic, value=value, key=key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _offsets(self, latest: dict[tuple[str, int], int]) -> list[TopicPartition]:
        if not latest:
            # a timer-only transaction: commit the current positions so a fenced worker cannot commit
            assignment = self.consumer.assignment()
            if not assignment:
                return []
            return [tp for tp in self.consumer.position(assignment) if tp.offset >= 0]
        return [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]

    def _reset(self) -> None:
        """After a failed transaction: state and positions back to what was committed."""
        self._needs_reset = False
        assignment = self.consumer.assignment()
        for p in list(self.assigned):
            self.drop(p)
            self.restore(p, read_changelog(self.settings, self.changelog, p))
        if assignment:
            # assign, not seek: a partition whose fetch stopped on an error cannot be sought
            commits = retry_transient("committed offsets", lambda: self.consumer.committed(assignment, timeout=10))
            self.consumer.assign([self._resume_at(tp) for tp in commits])

    def _resume_at(self, committed: TopicPartition) -> TopicPartition:
        """Where a partition resumes: its committed offset; the beginning when it has none; the earliest
        record left when retention deleted records never processed (said loudly: they are lost)."""
        part = TopicPartition(committed.topic, committed.partition)
        if committed.offset < 0:
            return TopicPartition(committed.topic, committed.partition, OFFSET_BEGINNING)
        low, _high = retry_transient("watermark offsets", functools.partial(
            self.consumer.get_watermark_offsets, part, timeout=10))
        if committed.offset < low:
            log.error("%s[%d]: records %d..%d were deleted by retention before they were processed",
                      committed.topic, committed.partition, committed.offset, low - 1)
            return TopicPartition(committed.topic, committed.partition, low)
        # the committed offset without its leader epoch: librdkafka's epoch for a position can be stale after
        # leader changes (a 3-broker cluster showed offset 79 tagged epoch 0 while epoch 0 had ended at
        # offset 9), and validated against it the position reads as "log truncated" again and again; with
        # unclean leader election off a committed offset is never truncated away
        return TopicPartition(committed.topic, committed.partition, committed.offset)

    def close(self) -> None:
        self.watchdog.stop()
        try:
            self.consumer.close()
        finally:
            self.deadletters.producer.flush(10)
