"""Shared setup of the aggregator benchmarks: a broker, a topic prefix, and synthetic instances."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from radstream.events.models import InstanceReceived
from radstream.kafka.topics import create_topics
from radstream.settings import Settings


@contextmanager
def broker() -> Iterator[str]:
    """RADSTREAM_BENCH_BOOTSTRAP if set, else a fresh local broker on free ports."""
    given = os.environ.get("RADSTREAM_BENCH_BOOTSTRAP")
    if given:
        yield given
        return
    from radstream.devenv.kafka import KafkaServer
    from radstream.devenv.process import free_port

    with tempfile.TemporaryDirectory(prefix="radstream-bench-") as tmp:
        server = KafkaServer(Path(tmp), port=free_port(), controller_port=free_port(), heap="1g")
        server.start()
        try:
            yield server.bootstrap
        finally:
            server.stop()


def bench_settings(bootstrap: str, partitions: int = 3, **aggregator: float) -> Settings:
    s = Settings(home=Path(tempfile.mkdtemp(prefix="radstream-bench-home-")),
                 kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"bench{uuid.uuid4().hex[:8]}",
                        "default_partitions": partitions},
                 aggregator=aggregator)
    create_topics(s)
    return s


def instance(patient: str, study: str, series: str, n: int, *, modality: str = "CT") -> InstanceReceived:
    sop = f"{series}.{n}"
    return InstanceReceived(
        producer="bench", patient_key=patient, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop,
        series_instance_uid=series, study_instance_uid=study, modality=modality, body_part_examined="ABDOMEN",
        series_description="ABD PORTAL VENOUS", series_number=2, instance_number=n,
        image_position_patient=[-200.0, -200.0, float(n) * 2.5], image_orientation_patient=[1, 0, 0, 0, 1, 0],
        pixel_spacing=[0.7, 0.7], slice_thickness=2.5, rows=512, columns=512, calling_ae_title="CT1",
        called_ae_title="RADSTREAM", peer_address="127.0.0.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        byte_size=526000, sha256="ab" * 32, store_uri=f"file:///var/store/ab/{sop}.dcm", received_at=datetime.now(UTC))
