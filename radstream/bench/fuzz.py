"""Hostile input for the ingest SCP and the event decoders: hypothesis-generated mutations of
real DICOM files (pydicom's test files and ``radstream synth`` output) and of real events.

Three targets, each with one rule:

- :class:`HandlerTarget`: the SCP's C-STORE handler (``IngestServer._on_store``) called in
  process on a received data set, as pynetdicom calls it: it returns a DIMSE status, never raises.
- :class:`NetworkTarget`: a running SCP over the network: every C-STORE gets a status or an
  association abort, and after each input the SCP still answers C-ECHO.
- :func:`decode_once`: ``codec.decode`` raises only ``DecodeError`` (or returns an event).

A crash is any other outcome; it is recorded with the input so it becomes a regression test.
"""

from __future__ import annotations

import random
import types
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from hypothesis import strategies as st

from radstream.producers.requestor import associate

# --- seeds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    meta: bytes  # preamble + DICM + file meta group, as written by pydicom
    body: bytes  # the data set as it travels in the C-STORE (after the file meta)
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _split(path: Path) -> tuple[bytes, bytes]:
    from radstream.producers.structure import file_meta_end

    with open(path, "rb") as fh:
        end = file_meta_end(fh)
    data = path.read_bytes()
    return data[:end], data[end:]


def load_seeds(extra: list[Path] | None = None, max_bytes: int = 2_000_000) -> list[Seed]:
    """pydicom's readable storage test files (small ones) plus ``extra`` files (synth output)."""
    from pydicom.data.data_manager import DATA_ROOT

    from radstream.producers.header import is_storage_class

    out: list[Seed] = []
    seen: set[bytes] = set()
    # the files shipped inside pydicom (get_testdata_files would try to download the others)
    for p in sorted((Path(DATA_ROOT) / "test_files").rglob("*.dcm")) + list(extra or []):
        try:
            if p.stat().st_size > max_bytes or "truncated" in p.name:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            cls, inst = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            if not is_storage_class(cls) or ds.file_meta.get("MediaStorageSOPClassUID") != cls:
                continue
            meta, body = _split(p)
        except Exception:
            continue
        if body in seen or not body:
            continue
        seen.add(body)
        out.append(Seed(p.name, meta, body, cls, inst, ts))
    return out


# --- mutations ------------------------------------------------------------------------------------

INTERESTING_32 = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
# tags and markers a parser trips on: item, item end, sequence end, pixel data, undefined length
TOKENS = [b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\xe0\x7f\x10\x00", b"\xff\xff\xff\xff",
          b"SQ\x00\x00", b"OB\x00\x00", b"UN\x00\x00", b"\x08\x00\x05\x00CS", b"\x00" * 8]


@dataclass(frozen=True)
class Mutation:
    kind: str
    at: float  # relative position 0..1
    value: int
    length: int

    def apply(self, data: bytes, rng: random.Random, other: bytes) -> bytes:
        n = len(data)
        pos = min(int(self.at * n), max(n - 1, 0))
        b = bytearray(data)
        if self.kind == "flip" and n:
            b[pos] ^= 1 << (self.value % 8)
        elif self.kind == "byte" and n:
            b[pos] = self.value % 256
        elif self.kind == "int32" and n:
            v = INTERESTING_32[self.value % len(INTERESTING_32)].to_bytes(4, "little")
            b[pos:pos + 4] = v
        elif self.kind == "truncate":
            del b[pos:]
        elif self.kind == "delete":
            del b[pos:pos + self.length]
        elif self.kind == "insert":
            b[pos:pos] = bytes(rng.getrandbits(8) for _ in range(self.length))
        elif self.kind == "token":
            b[pos:pos] = TOKENS[self.value % len(TOKENS)]
        elif self.kind == "duplicate":
            b[pos:pos] = data[pos:pos + self.length]
        elif self.kind == "splice" and other:
            cut = int(self.at * len(other))
            b = b[:pos] + bytearray(other[cut:cut + self.length * 16])
        elif self.kind == "grow":
            b += bytes(self.length * 64)
        return bytes(b)


KINDS = ["flip", "byte", "int32", "truncate", "delete", "insert", "token", "duplicate", "splice", "grow"]


def mutation_strategy() -> st.SearchStrategy[Mutation]:
    return st.builds(Mutation, kind=st.sampled_from(KINDS), at=st.floats(0, 1, allow_nan=False),
                     value=st.integers(0, 2**16), length=st.integers(1, 512))


def fuzz_input_strategy(n_seeds: int) -> st.SearchStrategy[tuple[int, int, list[Mutation], int]]:
    """(seed index, splice partner index, mutations, rng seed)."""
    return st.tuples(st.integers(0, n_seeds - 1), st.integers(0, n_seeds - 1),
                     st.lists(mutation_strategy(), min_size=1, max_size=6), st.integers(0, 2**32 - 1))


def mutate(seeds: list[Seed], spec: tuple[int, int, list[Mutation], int]) -> tuple[Seed, bytes]:
    i, j, muts, rs = spec
    rng = random.Random(rs)
    seed, other = seeds[i], seeds[j].body
    body = seed.body
    for m in muts:
        body = m.apply(body, rng, other)
    return seed, body


# --- outcomes -------------------------------------------------------------------------------------


@dataclass
class Tally:
    tried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    crashes: list[dict[str, Any]] = field(default_factory=list)

    def line(self, what: str) -> str:
        top = ", ".join(f"{k} x{v}" for k, v in self.statuses.most_common(6))
        return f"{what}: {self.tried} inputs, {len(self.crashes)} crashes; outcomes {top}"


# --- in-process handler ---------------------------------------------------------------------------


class HandlerTarget:
    """``IngestServer._on_store`` on a data set file, with the association data pynetdicom passes."""

    def __init__(self, home: Path) -> None:
        from radstream.producers.scp import IngestServer
        from radstream.settings import Settings

        settings = Settings.model_validate({"home": home, "site_secret": "fuzz",
                                            "ingest": {"publish": False, "metrics_port": 0}})
        self.server = IngestServer(settings)
        self.incoming = self.server.store.incoming
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.tally = Tally()
        self._n = 0

    def _event(self, path: Path, sop_class: str, sop_instance: str) -> Any:
        from pynetdicom.dimse_primitives import C_STORE

        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.Priority = 2
        requestor = types.SimpleNamespace(
            primitive=types.SimpleNamespace(called_ae_title="RADSTREAM", calling_ae_title="FUZZER"),
            ae_title="FUZZER", address="127.0.0.1", port=40000)
        assoc = types.SimpleNamespace(requestor=requestor, acceptor=types.SimpleNamespace(ae_title="RADSTREAM"))
        return types.SimpleNamespace(assoc=assoc, request=req, dataset_path=path)

    def __call__(self, seed: Seed, body: bytes) -> int:
        """Status of one input; a raised exception is recorded as a crash and re-raised."""
        self._n += 1
        path = self.incoming / f"fuzz-{self._n}.dcm"
        path.write_bytes(seed.meta + body)  # pynetdicom writes the file meta, then the received data set
        self.tally.tried += 1
        try:
            status = int(self.server._on_store(self._event(path, seed.sop_class_uid, seed.sop_instance_uid)))
        except Exception as exc:
            sig = signature(exc)
            self.tally.crashes.append({"seed": seed.name, "error": f"{type(exc).__name__}: {exc}", "body": body,
                                       "signature": sig})
            self.tally.statuses[f"raised {sig}"] += 1
            raise
        finally:
            path.unlink(missing_ok=True)
        self.tally.statuses[f"0x{status:04X}"] += 1
        return status


def signature(exc: BaseException) -> str:
    """Exception type and the innermost radstream frame: one bug, one signature."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/producers/" in f.filename or "/radstream/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
    return f"{type(exc).__name__} in {where}"


# --- over the network -----------------------------------------------------------------------------


class NetworkTarget:
    """C-STORE mutated data sets to a running SCP; after each input, C-ECHO must succeed."""

    def __init__(self, host: str, port: int, work: Path, called_ae: str = "RADSTREAM") -> None:
        self.host, self.port, self.called_ae = host, port, called_ae
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.tally = Tally()

    def _ae(self, seed: Seed) -> Any:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title="FUZZER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(seed.sop_class_uid, [seed.transfer_syntax_uid])
        ae.add_requested_context(Verification)
        return ae

    def __call__(self, seed: Seed, body: bytes) -> str:
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes as they are: no decode, no re-encode
        path = self.work / "input.dcm"
        path.write_bytes(seed.meta + body)
        self.tally.tried += 1
        assoc = associate(self._ae(seed), self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            self._crash(seed, body, "association refused")
            return "refused"
        try:
            try:
                rsp = assoc.send_c_store(path)
                outcome = f"0x{int(rsp.Status):04X}" if "Status" in rsp else "no response (aborted)"
            except Exception as exc:  # our own SCU refusing the input locally
                outcome = f"not sent ({type(exc).__name__})"
            if assoc.is_established:
                echo = assoc.send_c_echo()
                if "Status" not in echo or int(echo.Status) != 0:
                    state = ("aborted" if assoc.is_aborted else "released" if assoc.is_released
                             else "established" if assoc.is_established else "other")
                    self._crash(seed, body, f"C-ECHO after the input failed (after {outcome}; "
                                            f"response {'none' if 'Status' not in echo else echo.Status}; "
                                            f"association {state})")
                    outcome = "echo failed"
                assoc.release()
        finally:
            if assoc.is_established:
                assoc.abort()
        if not self.echo():
            self._crash(seed, body, "SCP no longer answers C-ECHO on a new association")
        self.tally.statuses[outcome] += 1
        return outcome

    def echo(self) -> bool:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title="FUZZER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(Verification)
        assoc = associate(ae, self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            return False
        try:
            rsp = assoc.send_c_echo()
            return "Status" in rsp and int(rsp.Status) == 0
        finally:
            assoc.release()

    def _crash(self, seed: Seed, body: bytes, why: str) -> None:
        self.tally.crashes.append({"seed": seed.name, "error": why, "body": body})


# --- event decoders -------------------------------------------------------------------------------


def sample_events() -> list[Any]:
    """One real event of each kind the pipeline writes (encoded by the real codec)."""
    from datetime import UTC, datetime

    from radstream.events import models as m

    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    events: list[Any] = [
        m.InstanceReceived(producer="fuzz", patient_key="k" * 64, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3", study_instance_uid="1.2",
                           calling_ae_title="A", called_ae_title="B", peer_address="127.0.0.1:1",
                           transfer_syntax_uid="1.2.840.10008.1.2.1", byte_size=10, sha256="ab" * 32,
                           store_uri="file:///s/x.dcm", received_at=now, rows=64, columns=64,
                           image_position_patient=[1.0, 2.0, 3.0], series_description="AX T2 FLAIR"),
        m.DeadLetter(producer="fuzz", source_topic="t", source_partition=1, source_offset=2, source_key=b"k",
                     payload=b"\x00\x01" * 20, error_type="E", error="e", component="c"),
    ]
    return events


def decode_once(codec: Any, data: bytes) -> str:
    """'ok' or 'DecodeError'; anything else propagates (a crash)."""
    from radstream.events.serde import DecodeError

    try:
        codec.decode(data)
    except DecodeError:
        return "DecodeError"
    return "ok"


def bytes_mutations() -> st.SearchStrategy[list[Mutation]]:
    return st.lists(mutation_strategy(), min_size=1, max_size=4)


def mutate_bytes(data: bytes, muts: list[Mutation], rng_seed: int = 0) -> bytes:
    rng = random.Random(rng_seed)
    for m in muts:
        data = m.apply(data, rng, data)
    return data


def record(path: Path, crashes: list[dict[str, Any]]) -> None:
    """Write crashing inputs (hex) for a regression test."""
    if not crashes:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for c in crashes:
            fh.write(f"{c['seed']}\t{c['error']}\t{c['body'].hex()}\n")
