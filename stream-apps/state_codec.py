"""Changelog records of the aggregator's state: one per patient, one per series, one per chunk of instances.

Keys: ``<patient>`` for the patient's studies and times; ``<patient>\\x1f<study>\\x1f<series>`` for a
series' attributes and timers; ``<patient>\\x1f<study>\\x1f<series>\\x1f#<n>`` for the instances a
series gained in one transaction (chunk *n*). ``None`` (a tombstone) deletes.

Patient and series values are compact JSON. A chunk is a sequence of length-prefixed entries,
each either the instance's ``InstanceReceived`` exactly as it arrived (Avro single-object
encoding, so a restore reads it with the same codec and schema evolution as the input topic)
or a compact JSON instance reference when those bytes are not at hand. Keeping the input bytes
costs no encoding per instance, and one record per series and transaction instead of one per
instance keeps the producer's per-record cost off the hot path. An instance is written once, so
the changelog grows with the number of instances, not with series size times updates.

Keys ``<patient>\\x1f<study>\\x1f<series>\\x1f<sop>`` (one JSON record per instance, the first
format) are still read, and deleted when their patient is purged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from radstream.stream_apps.grouping import PatientState, SeriesState, StudyState, instance_ref

from radstream.events.models import Event, InstanceReceived, InstanceRef

SEP = "\x1f"
CHUNK = "#"  # the last key part of a chunk record starts with this (a UID never does)
_AVRO_MAGIC = b"\xc3\x01"


def _ms(d: datetime | None) -> int | None:
    return None if d is None else int(d.timestamp() * 1000)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def series_key(patient: str, sk: tuple[str, str]) -> str:
    return f"{patient}{SEP}{sk[0]}{SEP}{sk[1]}"


def encode_meta(p: PatientState) -> bytes:
    studies = [
        [st.study_uid, st.called_ae_title, st.calling_ae_title, st.accession_number, st.study_date,
         [list(k) for k in st.series_keys], _ms(st.first_received_at), _ms(st.last_received_at),
         st.opened_at, st.revision, st.open, st.late, st.closed_at,
         [st.study_time, st.study_description, st.institution_name, st.station_name, st.referring_physician_name]]
        for st in p.studies.values()
    ]
    return json.dumps({"v": 1, "last_seen": p.last_seen, "studies": studies}, separators=(",", ":")).encode()


def encode_series(s: SeriesState) -> bytes:
    data = [s.study_uid, s.series_uid, s.called_ae_title, s.calling_ae_title, s.accession_number, s.modality,
            s.body_part_examined, s.series_description, s.series_number, s.image_orientation_patient,
            s.slice_thickness, s.station_name, _ms(s.first_received_at), _ms(s.last_received_at), s.opened_at,
            s.last_seen, s.revision, s.open, s.late, s.closed_at, s.chunks, s.manufacturer, s.attributes,
            s.ae_pipelines]
    return json.dumps({"v": 4, "s": data}, separators=(",", ":")).encode()


def encode_instance(i: InstanceRef) -> bytes:
    return json.dumps([i.sop_instance_uid, i.sop_class_uid, i.store_uri, i.sha256, i.byte_size, i.instance_number,
                       i.position_along_normal, _ms(i.received_at)], separators=(",", ":")).encode()


def decode_instance(value: bytes) -> InstanceRef:
    sop, cls, uri, sha, size, num, pos, recv = json.loads(value)
    received = _dt(recv)
    assert received is not None
    return InstanceRef(sop_instance_uid=sop, sop_class_uid=cls, store_uri=uri, sha256=sha, byte_size=size,
                       instance_number=num, position_along_normal=pos, received_at=received)


def decode_study(row: list[Any]) -> StudyState:
    """A study of a patient record; rows written before the rest of the identity was kept have 13 items."""
    (uid, called, calling, acc, date, keys, first, last, opened, rev, is_open, late, closed) = row[:13]
    time, description, institution, station, referring = row[13] if len(row) > 13 else (None,) * 5
    return StudyState(uid, called, calling, acc, date, [(k[0], k[1]) for k in keys], _dt(first), _dt(last),
                      opened, rev, is_open, late, closed, study_time=time, study_description=description,
                      institution_name=institution, station_name=station, referring_physician_name=referring)


def decode_series(value: bytes) -> SeriesState:
    row = json.loads(value)["s"]
    chunks = row[20] if len(row) > 20 else 0  # v2 records had no chunks
    (study, series, called, calling, acc, modality, body, desc, number, iop, thick, station, first, last,
     opened, last_seen, rev, is_open, late, closed) = row[:20]
    manufacturer, attributes, ae_pipelines = row[21:24] if len(row) > 21 else (None, {}, [])  # v4 added them
    return SeriesState(study, series, called, calling, acc, modality, body, desc, number, iop, thick, station,
                       {}, _dt(first), _dt(last), opened, last_seen, rev, is_open, late, closed, chunks,
                       manufacturer=manufacturer, attributes=attributes, ae_pipelines=ae_pipelines)


def pack_chunk(entries: list[bytes]) -> bytes:
    """Length-prefixed entries (4 bytes, big endian, then the entry)."""
    return b"".join([len(e).to_bytes(4, "big") + e for e in entries])


def unpack_chunk(value: bytes) -> list[bytes]:
    out, i, n = [], 0, len(value)
    while i < n:
        size = int.from_bytes(value[i:i + 4], "big")
        if size <= 0 or i + 4 + size > n:
            raise ValueError(f"corrupt changelog chunk at byte {i}")
        out.append(value[i + 4:i + 4 + size])
        i += 4 + size
    return out


def decode_entry(entry: bytes, decode: Callable[[bytes], Event] | None) -> InstanceRef:
    """One chunk entry: the received event (Avro) or a JSON instance reference."""
    if entry[:2] == _AVRO_MAGIC:
        if decode is None:
            raise ValueError("a changelog chunk holds Avro events but the restorer has no codec")
        ev = decode(entry)
        if not isinstance(ev, InstanceReceived):
            raise ValueError(f"changelog chunk entry is a {type(ev).__name__}, not an InstanceReceived")
        return instance_ref(ev)
    return decode_instance(entry)


class StateRestorer:
    """Rebuilds patients from changelog records read in offset order (last record per key wins)."""

    def __init__(self, decode: Callable[[bytes], Event] | None = None) -> None:
        """``decode``: the codec's decode, for chunks that hold the received Avro events."""
        self.decode = decode
        self.meta: dict[str, bytes] = {}
        self.series: dict[str, dict[tuple[str, str], bytes]] = {}
        self.instances: dict[str, dict[tuple[str, str], dict[str, bytes]]] = {}  # legacy: one per SOP
        self.chunks: dict[str, dict[tuple[str, str], dict[int, bytes]]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if key.count(SEP) == 3:
            patient, study, series, last = key.split(SEP, 3)
            if last.startswith(CHUNK):
                per_chunk = self.chunks.setdefault(patient, {}).setdefault((study, series), {})
                if value is None:
                    per_chunk.pop(int(last[1:]), None)
                else:
                    per_chunk[int(last[1:])] = value
                return
            per_series = self.instances.setdefault(patient, {}).setdefault((study, series), {})
            if value is None:
                per_series.pop(last, None)
            else:
                per_series[last] = value
        elif SEP in key:
            patient, study, series = key.split(SEP, 2)
            per = self.series.setdefault(patient, {})
            if value is None:
                per.pop((study, series), None)
            else:
                per[(study, series)] = value
        elif value is None:
            self.meta.pop(key, None)
            self.series.pop(key, None)
            self.instances.pop(key, None)
            self.chunks.pop(key, None)
        else:
            self.meta[key] = value

    def patients(self) -> dict[str, PatientState]:
        out: dict[str, PatientState] = {}
        for key, raw in self.meta.items():
            data = json.loads(raw)
            p = PatientState(key, data["last_seen"])
            for row in data["studies"]:
                st = decode_study(row)
                p.studies[st.study_uid] = st
            for sk, value in self.series.get(key, {}).items():
                ser = p.series[sk] = decode_series(value)
                legacy = self.instances.get(key, {}).get(sk, {})
                for sop, raw_inst in legacy.items():
                    ser.instances[sop] = decode_instance(raw_inst)
                ser.legacy_instance_keys = bool(legacy)
                chunks = self.chunks.get(key, {}).get(sk, {})
                for n in sorted(chunks):
                    for entry in unpack_chunk(chunks[n]):
                        ref = decode_entry(entry, self.decode)
                        ser.instances[ref.sop_instance_uid] = ref
                if chunks:
                    ser.chunks = max(ser.chunks, max(chunks) + 1)
            # a series record written without its study's meta (cannot happen in one transaction): drop
            for st in p.studies.values():
                st.series_keys = [k for k in st.series_keys if k in p.series]
            p.index()
            out[key] = p
        return out


def dirty_records(p: PatientState, received: Mapping[str, bytes] | None = None) -> list[tuple[str, bytes | None]]:
    """Records for what changed in this patient since the last call; clears the dirty marks.

    ``received``: SOP Instance UID -> the InstanceReceived bytes as consumed; instances found
    there are kept as those bytes, others as JSON references.
    """
    recs: list[tuple[str, bytes | None]] = []
    if p.dirty_instances:
        new: dict[tuple[str, str], list[bytes]] = {}
        for sk, sop in p.dirty_instances:
            entry = received.get(sop) if received is not None else None
            if entry is None:
                entry = encode_instance(p.series[sk].instances[sop])
            new.setdefault(sk, []).append(entry)
        for sk, entries in new.items():
            s = p.series[sk]
            recs.append((f"{series_key(p.key, sk)}{SEP}{CHUNK}{s.chunks}", pack_chunk(entries)))
            s.chunks += 1
            p.dirty_series.add(sk)
    recs += [(series_key(p.key, sk), encode_series(p.series[sk])) for sk in sorted(p.dirty_series)]
    if p.dirty_meta or recs:
        recs.append((p.key, encode_meta(p)))
    p.dirty_series.clear()
    p.dirty_instances.clear()
    p.dirty_meta = False
    return recs


def tombstones(p: PatientState) -> list[tuple[str, bytes | None]]:
    """Records that delete everything of a purged patient."""
    recs: list[tuple[str, bytes | None]] = []
    for sk, s in p.series.items():
        base = series_key(p.key, sk)
        recs += [(f"{base}{SEP}{CHUNK}{n}", None) for n in range(s.chunks)]
        if s.legacy_instance_keys:
            recs += [(f"{base}{SEP}{sop}", None) for sop in s.instances]
        recs.append((base, None))
    recs.append((p.key, None))
    return recs
