"""`radstream status` and `radstream topics scale` against the real broker."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from radstream.cli.context import set_config
from radstream.cli.main import app
from radstream.events.models import InferenceRequested
from radstream.kafka.consumer import EventConsumer
from radstream.kafka.producer import EventProducer
from radstream.ops.scale import ScaleError, scale_pipeline
from radstream.ops.status import group_status
from radstream.settings import Settings
from tests.avro_samples import sample_event
from tests.waiting import eventually

pytestmark = pytest.mark.kafka


def _cli_env(s: Settings) -> dict[str, str]:
    return {"RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "RADSTREAM_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
            "RADSTREAM_KAFKA__DEFAULT_PARTITIONS": str(s.kafka.default_partitions)}


def test_status_shows_members_and_lag_per_partition(kafka_settings: Settings) -> None:
    s = kafka_settings
    topic = s.topic("requests.liver")
    producer = EventProducer(s, "test-status-producer")
    for i in range(12):
        producer.send_sync(topic, f"patient-{i}".encode(), sample_event(InferenceRequested, i))
    group = f"{s.kafka.topic_prefix}-infer-liver"
    consumer = EventConsumer(s, group, [topic], client_id="worker-a")
    try:
        got: list = []
        eventually(lambda: got.extend(consumer.poll_batch(100, 0.5)) or len(got) >= 5, 30, what="messages")
        consumer.commit(got[:5])  # 5 done, the rest lag
        (g,) = eventually(lambda: [x for x in group_status(s, [group]) if x.members], 30, what="a member")
        assert g.state in ("STABLE", "COMPLETING_REBALANCE", "PREPARING_REBALANCE")
        assert [m.client_id for m in g.members] == ["worker-a"]
        assert {p for _, p in g.members[0].partitions} == {0, 1, 2}
        assert len(g.partitions) == 3 and {p.topic for p in g.partitions} == {topic}
        assert sum(p.end for p in g.partitions) == 12
        assert g.total_lag == 12 - 5
        assert all(p.member == "worker-a" for p in g.partitions)
        for p in g.partitions:
            assert p.lag == p.end - (p.committed or 0)

        set_config(None)
        r = CliRunner().invoke(app, ["status", "--group", group, "--json"], env=_cli_env(s))
        assert r.exit_code == 0, r.output
        (doc,) = json.loads(r.output)
        assert doc["total_lag"] == 7 and doc["members"][0]["client_id"] == "worker-a"
        r = CliRunner().invoke(app, ["status"], env=_cli_env(s))
        assert r.exit_code == 0 and f"{group}  state=" in r.output and "lag=7" in r.output
    finally:
        consumer.close()
        set_config(None)


def test_topics_scale_adds_partitions_and_refuses_to_shrink(kafka_settings: Settings) -> None:
    s = kafka_settings
    set_config(None)
    try:
        r = CliRunner().invoke(app, ["topics", "scale", "--pipeline", "liver", "--partitions", "6"], env=_cli_env(s))
        assert r.exit_code == 0, r.output
        assert f"{s.topic('requests.liver')}: scaled 3 -> 6 partitions" in r.output
        from radstream.kafka.topics import describe_topics

        by = {t.name: t.partitions for t in describe_topics(s)}
        assert by[s.topic("requests.liver")] == 6
        assert by[s.topic("requests.brain-tumour")] == 3  # other pipelines untouched
        r = CliRunner().invoke(app, ["topics", "scale", "--pipeline", "liver", "--partitions", "2"], env=_cli_env(s))
        assert r.exit_code == 2 and "cannot remove partitions" in r.output
        with pytest.raises(ScaleError, match="unknown pipeline"):
            scale_pipeline(s, "no-such-pipeline", 4)
    finally:
        set_config(None)
