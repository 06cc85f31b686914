"""Helpers of the aggregator/dispatcher integration tests and benchmarks: make, send and read events."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from radstream.events.codec import codec_for
from radstream.events.models import Event, InstanceReceived
from radstream.kafka.read_to_end import read_to_end
from radstream.settings import Settings


def instance(patient: str, study: str, series: str, n: int, *, z: float | None = None, modality: str = "MR",
             description: str = "AX FLAIR", called: str = "RADSTREAM", body_part: str = "BRAIN",
             **extra: Any) -> InstanceReceived:
    sop = f"{series}.{n}"
    return InstanceReceived(
        producer="test", patient_key=patient, sop_class_uid="1.2.840.10008.5.1.4.1.1.4", sop_instance_uid=sop,
        series_instance_uid=series, study_instance_uid=study, modality=modality, body_part_examined=body_part,
        series_description=description, series_number=1, instance_number=n,
        image_position_patient=[0.0, 0.0, float(z if z is not None else n)],
        image_orientation_patient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], slice_thickness=1.0, rows=8, columns=8,
        calling_ae_title="SCANNER", called_ae_title=called, peer_address="127.0.0.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", byte_size=1000, sha256="0" * 64,
        store_uri=f"file:///store/{sop}.dcm", received_at=datetime.now(UTC), **extra)


class Sender:
    def __init__(self, settings: Settings) -> None:
        self.codec = codec_for(settings)
        self.producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5,
                                  "acks": "all", "enable.idempotence": True})
        self.topic = settings.topic("instances")

    def send(self, ev: InstanceReceived) -> None:
        self.producer.produce(self.topic, key=ev.patient_key, value=self.codec.encode(ev))
        self.producer.poll(0)

    def raw(self, key: bytes, value: bytes) -> None:
        self.producer.produce(self.topic, key=key, value=value)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def read_all(settings: Settings, topic: str, timeout: float = 10.0) -> list[tuple[Any, Event]]:
    """Every committed message of a topic, decoded, as (message, event)."""
    codec = codec_for(settings)
    return [(m, codec.decode(m.value())) for m in read_to_end(settings, [topic], timeout=timeout)]


def worker_env(settings: Settings, **aggregator: float | str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RADSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RADSTREAM_HOME": str(settings.home),
        "RADSTREAM_SITE_SECRET": "test-site-secret",
        # no fixed default ports in tests: the workers' /metrics and health endpoints off
        "RADSTREAM_OBSERVABILITY__PORTS": '{"aggregate": 0, "dispatch": 0}',
    })
    for k, v in aggregator.items():
        env[f"RADSTREAM_AGGREGATOR__{k.upper()}"] = str(v)
    return env


def start_worker(settings: Settings, log: Path, command: str = "aggregate",
                 **aggregator: float | str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("radstream")
    fh = log.open("ab")
    return subprocess.Popen([str(exe), command, "--log-level", "info"], env=worker_env(settings, **aggregator),
                            stdout=fh, stderr=subprocess.STDOUT)


def committed_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages of ``topic`` not yet committed by ``group``."""
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group,
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        lag = 0
        for tp in c.committed(tps, timeout=10):
            _, high = c.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else 0)
        return lag
    finally:
        c.close()
