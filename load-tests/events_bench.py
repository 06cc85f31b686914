"""Foundation benchmarks (not a timed test).

1. Serde: radstream's encode+decode of InstanceReceived vs bare fastavro
   schemaless_writer+schemaless_reader on the same records, same run. Goal >= 0.8.
2. Producer: InstanceReceived events/s to a real broker (idempotent, acks=all).

    .venv/bin/python load-tests/events_bench.py [--bootstrap HOST:PORT] [--events 100000]

Without --bootstrap a private broker is started on free ports and stopped afterwards.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import fastavro

from radstream.devenv.process import exit_on_sigterm
from radstream.events.models import InstanceReceived, utcnow
from radstream.events.schemas import current_schemas
from radstream.events.serde import SingleObjectCodec


def make_events(n: int) -> list[InstanceReceived]:
    now = utcnow()
    return [
        InstanceReceived(
            producer="radstream-ingest/0.1.0",
            patient_key=f"{i % 97:064x}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i}",
            series_instance_uid=f"1.2.826.0.1.3680043.8.498.{i // 200}.1",
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.{i // 1000}",
            accession_number=f"ACC{i // 1000:06d}",
            modality="MR",
            body_part_examined="BRAIN",
            series_description="AX T2 FLAIR",
            series_number=3,
            instance_number=i % 200 + 1,
            image_position_patient=[-120.0, -120.0, float(i % 200)],
            image_orientation_patient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            pixel_spacing=[0.47, 0.47],
            slice_thickness=1.0,
            rows=512,
            columns=512,
            station_name="MR01",
            manufacturer="SIEMENS",
            study_date="20261126",
            calling_ae_title="MR01",
            called_ae_title="RADSTREAM",
            peer_address="127.0.0.1:40000",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            byte_size=524_288,
            sha256=f"{i:064x}",
            store_uri=f"file:///var/radstream/store/{i:064x}.dcm",
            received_at=now,
        )
        for i in range(n)
    ]


def bench_serde(events: list[InstanceReceived], rounds: int) -> tuple[float, float]:
    codec = SingleObjectCodec()
    parsed = current_schemas()["InstanceReceived"].parsed
    dicts = [e.to_avro() for e in events]
    ours, bare = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for e in events:
            codec.decode(codec.encode(e))
        ours.append(len(events) / (time.perf_counter() - t))
        t = time.perf_counter()
        for d in dicts:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, d)
            buf.seek(0)
            fastavro.schemaless_reader(buf, parsed)
        bare.append(len(dicts) / (time.perf_counter() - t))
    return statistics.median(ours), statistics.median(bare)


def bench_producer(bootstrap: str, events: list[InstanceReceived]) -> float:
    from radstream.kafka.producer import EventProducer
    from radstream.kafka.topics import create_topics
    from radstream.settings import Settings

    s = Settings(kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"bench{int(time.time())}"})  # type: ignore[arg-type]
    create_topics(s)
    producer = EventProducer(s, "bench")
    topic = s.topic("instances")
    failures = 0
    lock = threading.Lock()

    def cb(err: object, _msg: object) -> None:
        nonlocal failures
        if err is not None:
            with lock:
                failures += 1

    t = time.perf_counter()
    for e in events:
        producer.send(topic, e.patient_key, e, on_delivery=cb)
    left = producer.flush(120)
    elapsed = time.perf_counter() - t
    if left or failures:
        raise RuntimeError(f"{left} undelivered, {failures} failed")
    return len(events) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--serde-events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    events = make_events(args.serde_events)
    ours, bare = bench_serde(events, args.rounds)
    print(f"serde InstanceReceived encode+decode: radstream {ours:,.0f}/s, bare fastavro {bare:,.0f}/s, "
          f"ratio {ours / bare:.2f} (goal >= 0.8)")

    server = None
    bootstrap = args.bootstrap
    if not bootstrap:
        from radstream.devenv.kafka import KafkaServer
        from radstream.devenv.process import free_port

        server = KafkaServer(Path(tempfile.mkdtemp(prefix="radstream-bench-")), port=free_port(),
                             controller_port=free_port())
        server.start()
        bootstrap = server.bootstrap
    try:
        rate = bench_producer(bootstrap, make_events(args.events))
        print(f"producer InstanceReceived to {bootstrap} (idempotent, acks=all, lz4): {rate:,.0f} events/s "
              f"over {args.events:,} events")
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
