"""Mutual TLS on the ingest SCP with dcmtk's storescu: client certificates mapped to calling AE titles.

Certificates are made here with the openssl CLI: a CA, the SCP's certificate, and two client
certificates the CA signed (``ct-scanner-1`` mapped to the calling AE title ``CT_SCANNER``,
``rogue-device`` mapped to another title), plus one from a CA the SCP does not trust.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from radstream.producers.sample_series import write_series

from radstream.events.models import InstanceReceived
from radstream.settings import IngestTlsSettings, Settings
from tests.integration.ingest_support import consume, ingest_settings, running_ingest, stored_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.dicom]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(tmp: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert))
    return key, cert


def _signed(tmp: Path, ca: tuple[Path, Path], cn: str, san: str) -> tuple[Path, Path]:
    stem = f"{cn}.{ca[1].stem}"
    key, csr, cert, ext = (tmp / f"{stem}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key),
             "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return key, cert


def _storescu(port: int, calling: str, tls: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", *tls, "-aet", calling, "-aec", "RADSTREAM", "-to", "20", "-ta", "20", "-td", "20",
         "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_client_certificates_are_mapped_to_calling_ae_titles(kafka_settings: Settings, tmp_path: Path) -> None:
    ca = _ca(tmp_path, "radstream-test-ca")
    scp_key, scp_cert = _signed(tmp_path, ca, "localhost", "DNS:localhost,IP:127.0.0.1")
    ct_key, ct_cert = _signed(tmp_path, ca, "ct-scanner-1", "DNS:ct-scanner-1.example.org")
    rogue_key, rogue_cert = _signed(tmp_path, ca, "rogue-device", "DNS:rogue-device.example.org")
    other_ca = _ca(tmp_path, "untrusted-ca")
    stranger_key, stranger_cert = _signed(tmp_path, other_ca, "ct-scanner-1", "DNS:ct-scanner-1.example.org")
    tls = IngestTlsSettings(cert_file=scp_cert, key_file=scp_key, ca_file=ca[1],
                            client_ae_titles={"ct-scanner-1": ["CT_SCANNER"], "rogue-device": ["ROGUE"]})
    s = ingest_settings(kafka_settings, tls=tls)
    files = write_series(tmp_path / "series", 4, rows=32, columns=32, seed=9)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    trust = ["+cf", str(ca[1])]
    with running_ingest(s) as server:
        # the mapped certificate with its own calling AE title: stored
        ok = _storescu(server.port, "CT_SCANNER", ["+tls", str(ct_key), str(ct_cert), *trust], files[0])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Rejected" not in ok.stdout + ok.stderr
        # a certificate the CA signed, but not mapped to this calling AE title: refused at association
        wrong = _storescu(server.port, "CT_SCANNER", ["+tls", str(rogue_key), str(rogue_cert), *trust], files[1])
        assert wrong.returncode != 0
        assert "calling ae title not recognized" in (wrong.stdout + wrong.stderr).lower(), wrong.stderr
        # the mapped certificate, but another device's calling AE title: refused
        borrowed = _storescu(server.port, "ROGUE", ["+tls", str(ct_key), str(ct_cert), *trust], files[2])
        assert borrowed.returncode != 0 and "rejected" in (borrowed.stdout + borrowed.stderr).lower()
        # no client certificate: the TLS handshake fails
        anonymous = _storescu(server.port, "CT_SCANNER", ["+tla", *trust], files[3])
        assert anonymous.returncode != 0
        # a certificate with the mapped CN from a CA the SCP does not trust: the handshake fails
        stranger = _storescu(server.port, "CT_SCANNER", ["+tls", str(stranger_key), str(stranger_cert), *trust],
                             files[3])
        assert stranger.returncode != 0
        events = [e for e in consume(s, s.topic("instances"), 1, timeout=30, settle=3.0)
                  if isinstance(e, InstanceReceived)]
        assert server.metrics.associations.labels("rejected")._value.get() == 2.0
    assert [e.sop_instance_uid for e in events] == [uids[0]]
    assert (events[0].calling_ae_title, events[0].called_ae_title) == ("CT_SCANNER", "RADSTREAM")
    assert stored_bytes(events[0].store_uri, s)
    objects = [p for p in (s.store_root / "sha256").rglob("*") if p.is_file()]
    assert len(objects) == 1  # nothing of the refused senders was stored
