"""Changelog records of the aggregator's state: one per patient, one per series, one per instance.

Keys: ``<patient>`` for the patient's studies and times; ``<patient>\\x1f<study>\\x1f<series>`` for a
series' attributes and timers; ``<patient>\\x1f<study>\\x1f<series>\\x1f<sop>`` for one instance.
Values are compact JSON; ``None`` (a tombstone) deletes. An instance is written once, so the
changelog grows with the number of instances, not with series size times updates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from radstream.stream_apps.grouping import PatientState, SeriesState, StudyState

from radstream.events.models import InstanceRef

SEP = "\x1f"


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
         st.opened_at, st.revision, st.open, st.late, st.closed_at]
        for st in p.studies.values()
    ]
    return json.dumps({"v": 1, "last_seen": p.last_seen, "studies": studies}, separators=(",", ":")).encode()


def encode_series(s: SeriesState) -> bytes:
    data = [s.study_uid, s.series_uid, s.called_ae_title, s.calling_ae_title, s.accession_number, s.modality,
            s.body_part_examined, s.series_description, s.series_number, s.image_orientation_patient,
            s.slice_thickness, s.station_name, _ms(s.first_received_at), _ms(s.last_received_at), s.opened_at,
            s.last_seen, s.revision, s.open, s.late, s.closed_at]
    return json.dumps({"v": 2, "s": data}, separators=(",", ":")).encode()


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
    (uid, called, calling, acc, date, keys, first, last, opened, rev, is_open, late, closed) = row
    return StudyState(uid, called, calling, acc, date, [(k[0], k[1]) for k in keys], _dt(first), _dt(last),
                      opened, rev, is_open, late, closed)


def decode_series(value: bytes) -> SeriesState:
    (study, series, called, calling, acc, modality, body, desc, number, iop, thick, station, first, last,
     opened, last_seen, rev, is_open, late, closed) = json.loads(value)["s"]
    return SeriesState(study, series, called, calling, acc, modality, body, desc, number, iop, thick, station,
                       {}, _dt(first), _dt(last), opened, last_seen, rev, is_open, late, closed)


class StateRestorer:
    """Rebuilds patients from changelog records read in offset order (last record per key wins)."""

    def __init__(self) -> None:
        self.meta: dict[str, bytes] = {}
        self.series: dict[str, dict[tuple[str, str], bytes]] = {}
        self.instances: dict[str, dict[tuple[str, str], dict[str, bytes]]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if key.count(SEP) == 3:
            patient, study, series, sop = key.split(SEP, 3)
            per_series = self.instances.setdefault(patient, {}).setdefault((study, series), {})
            if value is None:
                per_series.pop(sop, None)
            else:
                per_series[sop] = value
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
                for sop, raw_inst in self.instances.get(key, {}).get(sk, {}).items():
                    ser.instances[sop] = decode_instance(raw_inst)
            # a series record written without its study's meta (cannot happen in one transaction): drop
            for st in p.studies.values():
                st.series_keys = [k for k in st.series_keys if k in p.series]
            p.index()
            out[key] = p
        return out


def dirty_records(p: PatientState) -> list[tuple[str, bytes | None]]:
    """Records for what changed in this patient since the last call; clears the dirty marks."""
    recs: list[tuple[str, bytes | None]] = [
        (f"{series_key(p.key, sk)}{SEP}{sop}", encode_instance(p.series[sk].instances[sop]))
        for sk, sop in p.dirty_instances]
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
        recs += [(f"{series_key(p.key, sk)}{SEP}{sop}", None) for sop in s.instances]
        recs.append((series_key(p.key, sk), None))
    recs.append((p.key, None))
    return recs
