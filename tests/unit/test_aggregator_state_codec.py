"""Changelog records of the aggregator: chunks of received events, JSON references, the first format."""

from __future__ import annotations

import json

import pytest
from radstream.stream_apps.grouping import AddOutcome, Aggregator, TimeoutPolicy, Timeouts
from radstream.stream_apps.state_codec import (
    SEP,
    StateRestorer,
    dirty_records,
    encode_instance,
    pack_chunk,
    tombstones,
    unpack_chunk,
)

from radstream.events.serde import SingleObjectCodec
from tests.unit.test_aggregator_grouping import Clock, inst

pytestmark = pytest.mark.unit


def _agg() -> Aggregator:
    return Aggregator(TimeoutPolicy(Timeouts(10, 30, 3600), retain_closed_s=50))


def _replay(records: list[tuple[str, bytes | None]], codec: SingleObjectCodec) -> Aggregator:
    restorer = StateRestorer(codec.decode)
    for k, v in records:
        restorer.apply(k, v)
    b = _agg()
    b.patients = restorer.patients()
    return b


def test_one_chunk_per_series_and_transaction_holding_the_received_bytes() -> None:
    codec, c, a = SingleObjectCodec(), Clock(), _agg()
    evs = [inst(sop=f"1.2.1.1.{n}", z=float(n), number=n) for n in range(1, 6)]
    raw = {e.sop_instance_uid: codec.encode(e) for e in evs}
    for e in evs[:3]:
        a.add(e, c())
    first = dirty_records(a.patients["P1"], raw)
    chunks = [(k, v) for k, v in first if k.endswith(f"{SEP}#0")]
    assert len(chunks) == 1 and len(first) == 3  # chunk, series, patient
    assert unpack_chunk(chunks[0][1] or b"") == [raw[e.sop_instance_uid] for e in evs[:3]]
    for e in evs[3:]:
        a.add(e, c.advance(1))
    second = dirty_records(a.patients["P1"], raw)
    assert [k.rsplit(SEP, 1)[1] for k, _ in second if k.count(SEP) == 3] == ["#1"]

    b = _replay(first + second, codec)
    assert b.patients["P1"].series[("1.2.1", "1.2.1.1")].chunks == 2
    assert b.add(evs[0], c()) is AddOutcome.DUPLICATE
    ea, eb = a.expire_due(c.advance(40)), b.expire_due(c())
    assert [e.to_avro() for e in ea] == [e.to_avro() for e in eb]
    assert [i.sop_instance_uid for i in eb[0].instances] == [e.sop_instance_uid for e in evs]  # type: ignore[attr-defined]


def test_instances_without_their_bytes_are_kept_as_json_references() -> None:
    codec, c, a = SingleObjectCodec(), Clock(), _agg()
    a.add(inst(sop="1.2.1.1.1", z=1), c())
    a.add(inst(sop="1.2.1.1.2", z=2), c())
    recs = dirty_records(a.patients["P1"], {"1.2.1.1.2": codec.encode(inst(sop="1.2.1.1.2", z=2))})
    b = _replay(recs, codec)
    assert set(b.patients["P1"].series[("1.2.1", "1.2.1.1")].instances) == {"1.2.1.1.1", "1.2.1.1.2"}


def test_first_format_records_are_read_and_deleted_on_purge() -> None:
    codec, c, a = SingleObjectCodec(), Clock(), _agg()
    a.add(inst(sop="1.2.1.1.1", z=1), c())
    p = a.patients["P1"]
    ref = p.series[("1.2.1", "1.2.1.1")].instances["1.2.1.1.1"]
    recs = dict(dirty_records(p))
    series_rec = json.loads(recs[f"P1{SEP}1.2.1{SEP}1.2.1.1"] or b"")
    series_rec["v"], series_rec["s"] = 2, series_rec["s"][:20]  # the first series format had no chunk count
    meta = recs["P1"]
    old = [(f"P1{SEP}1.2.1{SEP}1.2.1.1{SEP}1.2.1.1.1", encode_instance(ref)),
           (f"P1{SEP}1.2.1{SEP}1.2.1.1", json.dumps(series_rec).encode()), ("P1", meta)]
    restorer = StateRestorer(codec.decode)
    for k, v in old:
        restorer.apply(k, v)
    b = _agg()
    b.patients = restorer.patients()
    s = b.patients["P1"].series[("1.2.1", "1.2.1.1")]
    assert s.legacy_instance_keys and s.chunks == 0 and list(s.instances) == ["1.2.1.1.1"]
    b.expire_due(c.advance(40))
    b.expire_due(c.advance(100))
    assert list(b.purged) == ["P1"]
    gone = tombstones(b.purged["P1"])
    assert {k for k, _ in old} <= {k for k, v in gone if v is None}


def test_corrupt_chunk_is_refused() -> None:
    assert unpack_chunk(pack_chunk([b"ab", b"c"])) == [b"ab", b"c"]
    with pytest.raises(ValueError, match="corrupt"):
        unpack_chunk(pack_chunk([b"abc"])[:-1])
