"""R3: aggregator instance events/s divided by a bare confluent-kafka consumer's events/s, same topic and data.

    .venv/bin/python load-tests/aggregator_throughput.py [--events 60000] [--series-size 200]

Both read the same pre-filled ``<prefix>.instances`` topic from the beginning in their own
consumer group; each rate is events / (time of the last event - time of the first event).
The aggregator does everything it does in production: Avro decode, dedupe and grouping,
changelog records of every changed series, one Kafka transaction per batch with the offsets.
Quiet periods are long here, so no series closes during the measured run (that cost is per
series, not per instance).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregator_bench_common import bench_settings, broker, instance
from radstream.stream_apps.aggregator import AggregatorWorker
from radstream.stream_apps.txloop import Output

from radstream.devenv.process import exit_on_sigterm
from radstream.events.codec import codec_for
from radstream.kafka.consumer import Received
from radstream.settings import Settings


def fill(s: Settings, events: int, series_size: int) -> None:
    codec = codec_for(s)
    p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "linger.ms": 20, "batch.num.messages": 10000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 500000})
    topic = s.topic("instances")
    n_series = events // series_size
    patients = max(1, n_series // 2)  # two series per study, one study per patient
    # interleave series as several scanners would
    for i in range(series_size):
        for k in range(n_series):
            pk = f"patient-{k % patients:05d}"
            ev = instance(pk, f"1.2.{k % patients}", f"1.2.{k % patients}.{k}", i)
            while True:
                try:
                    p.produce(topic, key=pk, value=codec.encode(ev))
                    break
                except BufferError:
                    p.poll(0.1)
    assert p.flush(120) == 0


def bare(s: Settings, events: int, decode: bool = False) -> float:
    codec = codec_for(s)
    c = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": f"bare-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([s.topic("instances")])
    n, first = 0, 0.0
    while n < events:
        msgs = c.consume(2000, 1.0)
        if msgs and not first:
            first = time.perf_counter()
        good = [m for m in msgs if not m.error()]
        if decode:
            for m in good:
                codec.decode(m.value())
        n += len(good)
    elapsed = time.perf_counter() - first
    c.close()
    return events / elapsed


class _FirstBatchClock:
    """The worker's consumer, stamping when the first batch of messages arrived."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.first = 0.0

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        msgs: list[Message] = self.consumer.consume(num_messages, timeout)
        if msgs and not self.first:
            self.first = time.perf_counter()
        return msgs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


class Timed(AggregatorWorker):
    """The production worker; the clock runs from the first batch's arrival (as for the bare
    consumer) to the commit of the transaction that holds the last event."""

    busy = 0.0
    last = 0.0

    def process(self, batch: list[Received], now: float) -> Output:
        t0 = time.perf_counter()
        out = super().process(batch, now)
        self.busy += time.perf_counter() - t0
        return out

    def _commit(self, batch: list[Received], latest: dict[tuple[str, int], int], out: Output) -> None:
        super()._commit(batch, latest, out)
        self.last = time.perf_counter()


def aggregator(s: Settings, events: int) -> tuple[float, Timed]:
    w = Timed(s)
    clock = _FirstBatchClock(w.consumer)
    w.consumer = clock  # type: ignore[assignment]
    w.run(until=lambda: w.processed >= events)
    return events / (w.last - clock.first), w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60000)
    ap.add_argument("--series-size", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="aggregator batch size (default: the setting's)")
    args = ap.parse_args()
    with broker() as bootstrap:
        s = bench_settings(bootstrap, args.partitions, series_quiet_s=3600, patient_quiet_s=3600, timer_interval_s=1)
        if args.batch:
            s.aggregator.batch_size = args.batch
        t0 = time.perf_counter()
        fill(s, args.events, args.series_size)
        print(f"filled {args.events} InstanceReceived events in {time.perf_counter() - t0:.1f}s "
              f"({args.events // args.series_size} series of {args.series_size})")
        bare_rate = bare(s, args.events)
        agg_rate, w = aggregator(s, args.events)
        bare_rate2 = bare(s, args.events)  # again, after: the machine is shared, take the better one
        decode_rate = bare(s, args.events, decode=True)
        ref = max(bare_rate, bare_rate2)
        print(f"bare confluent-kafka consumer: {bare_rate:,.0f} / {bare_rate2:,.0f} events/s")
        print(f"bare consumer + radstream Avro decode of each event: {decode_rate:,.0f} events/s")
        print(f"aggregator: {agg_rate:,.0f} events/s (grouping+changelog encode {w.busy:.2f}s of the run); "
              f"counts {w.counts}")
        print(f"R3 = {agg_rate / ref:.3f}   (aggregator / bare consumer)")
        print(f"aggregator / (bare consumer + decode) = {agg_rate / decode_rate:.3f}")
        us = 1e6
        print(f"per event: consume {us / ref:.1f} us, + Avro decode {us / decode_rate - us / ref:.1f} us, "
              f"+ the aggregator's own work (grouping, changelog, txn) {us / agg_rate - us / decode_rate:.1f} us")


if __name__ == "__main__":
    exit_on_sigterm()
    main()
