"""The ingest SCP: C-ECHO and C-STORE for every storage SOP class, claim check, events.

C-STORE success is answered only after the instance's bytes are fsynced in the store and
its InstanceReceived event is acknowledged by Kafka or fsynced in the outbox
(:class:`~radstream.producers.publisher.Publisher`). Bad input is refused with a DIMSE
failure status, dead-lettered (header bytes only, PHI blanked unless
``ingest.deadletter_keep_phi``) and logged without PHI.

Who may connect and how much they may send: allowed calling AE titles and peer networks,
with mutual TLS the calling AE titles each client certificate may use, concurrent
associations per remote address, instance size and bytes per association
(:mod:`~radstream.producers.limits`), and the idle timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pynetdicom
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from radstream.producers import limits, reactor
from radstream.producers.header import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Header,
    Rejected,
    header_bytes,
    read_header,
)
from radstream.producers.metrics import IngestMetrics
from radstream.producers.phi import strip_phi
from radstream.producers.publisher import Publisher, PublishFailed, Route
from radstream.producers.scu import set_nodelay

from radstream import __version__
from radstream.events.header_fields import header_fields, text
from radstream.events.models import DeadLetter, InstanceReceived
from radstream.observability import Observability, kafka_ready
from radstream.patient_key import patient_key
from radstream.pipelines.facts import attributes_of
from radstream.pipelines.spec import called_ae_routes, collected_keywords, deployment_pipelines
from radstream.secrets import site_secret
from radstream.settings import Settings
from radstream.store import ContentStore, hash_file

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPONENT = "radstream-ingest"
EVENT_NAMESPACE = uuid.UUID("5b0d3c52-1c1e-4b8e-9a51-6a7c2f0e4d11")
VERIFICATION_TS = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]

# A-ASSOCIATE-RJ: rejected-permanent by the service user, with a diagnostic
RJ_PERMANENT, RJ_USER = 0x01, 0x01
DIAG_NONE, DIAG_CALLING, DIAG_CALLED = 0x01, 0x03, 0x07
# ... or rejected-transient by the service provider (presentation), local-limit-exceeded: try later
RJ_TRANSIENT, RJ_PROVIDER_PRESENTATION, DIAG_LOCAL_LIMIT = 0x02, 0x03, 0x02


def event_id_for(sop_instance_uid: str, sha256: str) -> str:
    """The same instance bytes always give the same event id, so resends are dedupable downstream."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{sop_instance_uid}/{sha256}"))


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.ingest.tls
    if tls.cert_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.ca_file is not None:
        ctx.load_verify_locations(str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Inline:
    """An executor that runs each call at once, in the caller's thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


_INLINE = _Inline()


class ReusePortAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, bound with ``SO_REUSEPORT`` (Linux): several processes, each with a
    server of its own, listen on the same address and the kernel spreads new connections among them."""

    def server_bind(self) -> None:
        import socket

        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class IngestServer:
    """One SCP process: ``start()``, then ``stop()``.

    ``reuse_port``: listen with ``SO_REUSEPORT`` so that other processes may serve the same port
    (the ingest pool, :mod:`~radstream.producers.pool`); off, the port is this process's alone.
    """

    def __init__(self, settings: Settings, metrics: IngestMetrics | None = None, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.metrics = metrics or IngestMetrics()
        self.store = ContentStore.from_settings(settings)
        # first: refuses a placeholder in production, and a secret other than the store's (radstream.secrets)
        self._secret = site_secret(settings)
        self.publisher: Publisher | None = Publisher(settings, self.metrics) if settings.ingest.publish else None
        # the pipeline files: their AE titles are served, the tags their rules name are collected
        specs = deployment_pipelines(settings)
        self.called_ae_titles: dict[str, list[str]] = called_ae_routes(settings, specs)
        self.routing_keywords = collected_keywords(settings, specs)
        self.allowed_calling = {t.strip() for t in settings.dicom.allowed_calling_ae_titles}
        self.allowed_networks = [ipaddress.ip_network(p, strict=False) for p in settings.dicom.allowed_peers]
        self.client_ae_titles = {k: frozenset(t.strip() for t in v)
                                 for k, v in settings.ingest.tls.client_ae_titles.items()}
        self.max_per_peer = settings.dicom.max_associations_per_peer
        self._peer_lock = threading.Lock()
        self._early_limits = limits.supported()
        self.keep_phi = settings.ingest.deadletter_keep_phi
        self.topic = settings.topic("instances")
        self.deadletter_topic = settings.topic("deadletter")
        self.producer_name = f"{COMPONENT}/{__version__}"
        self.server: ThreadedAssociationServer | None = None
        self._sweeper = threading.Event()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._io = ThreadPoolExecutor(max(2, settings.dicom.max_associations), thread_name_prefix="ingest-io")
        self.obs: Observability | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    # --- lifecycle ---

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.dicom.ae_title)
        ae.maximum_pdu_size = self.settings.ingest.max_pdu_size
        ae.maximum_associations = self.settings.dicom.max_associations
        ae.require_called_aet = False  # checked against all configured titles in _on_requested
        ae.network_timeout = ae.dimse_timeout = self.settings.dicom.idle_timeout_s
        ae.acse_timeout = self.settings.dicom.acse_timeout_s
        syntaxes = list(self.settings.ingest.transfer_syntaxes)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification, VERIFICATION_TS)
        return ae

    def start(self) -> None:
        # Stream each data set to a file in the store's incoming folder (same filesystem:
        # storing it is an fsync and a hard link, never a copy or an in-memory buffer).
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.store.incoming)
        logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
        removed = self.store.sweep_incoming(older_than_s=3600)
        if removed:
            log.info("removed %d partial files left in %s", removed, self.store.incoming)
        if self.publisher is not None:
            self.publisher.start()
        self.obs = self.metrics.observability(self.settings)
        self.obs.add_readiness_check("dicom", self._listening)
        if self.publisher is not None and not self.settings.ingest.outbox:
            self.obs.add_readiness_check("kafka", kafka_ready(self.settings))  # no outbox: Kafka down = refusals
        self.obs.start()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
        ]
        ae = self.build_ae()
        address = (self.settings.dicom.bind_address, self.settings.dicom.port)
        self.server = self._serve(ae, address, handlers)
        threading.Thread(target=self._sweep_loop, name="ingest-sweep", daemon=True).start()
        log.info(
            "ingest SCP listening on %s:%d, AE titles %s, publishing %s",
            address[0], address[1], sorted(self.called_ae_titles), "on" if self.publisher else "OFF",
        )

    def _serve(self, ae: AE, address: tuple[str, int], handlers: list[Any]) -> ThreadedAssociationServer:
        """``AE.start_server(block=False)``, with the event-driven reactors where supported."""
        kwargs: dict[str, Any] = {}
        if self.settings.ingest.event_driven_reactor and reactor.supported():
            kwargs["request_handler"] = reactor.RequestHandler
        elif self.settings.ingest.event_driven_reactor:
            log.warning("pynetdicom %s: using its polling reactors (the event-driven ones are for %s)",
                        pynetdicom.__version__, f"{reactor.SUPPORTED_SERIES}x")
        server_class = ReusePortAssociationServer if self.reuse_port else ThreadedAssociationServer
        server = ae.make_server(address, evt_handlers=handlers, ssl_context=tls_context(self.settings),
                                server_class=server_class, **kwargs)
        ae._servers.append(server)  # as start_server does: AE.shutdown() stops it too
        threading.Thread(target=server.serve_forever, name="ingest-acceptor", daemon=True).start()
        return server

    def stop(self) -> None:
        self._sweeper.set()
        if self.obs is not None:
            self.obs.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self._io.shutdown(wait=False)
        if self.publisher is not None:
            self.publisher.close()

    def _listening(self) -> bool | str:
        """Readiness: the DICOM port accepts connections."""
        import socket

        if self.server is None:
            return "not listening"
        host, port = self.server.server_address[:2]
        with socket.create_connection(("127.0.0.1" if host in ("", "0.0.0.0") else host, port), timeout=1.0):
            return True

    def _sweep_loop(self) -> None:
        while not self._sweeper.wait(600):
            self.store.sweep_incoming(older_than_s=3600)

    # --- association control ---

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert primitive is not None
        called = str(primitive.called_ae_title).strip()
        calling = str(primitive.calling_ae_title).strip()
        peer = str(assoc.requestor.address)
        reject: tuple[int, int, int] | None = None
        if called not in self.called_ae_titles:
            reject, why = (RJ_PERMANENT, RJ_USER, DIAG_CALLED), "called AE title not served"
        elif self.allowed_calling and calling not in self.allowed_calling:
            reject, why = (RJ_PERMANENT, RJ_USER, DIAG_CALLING), "calling AE title not allowed"
        elif self.allowed_networks and not self._peer_allowed(peer):
            reject, why = (RJ_PERMANENT, RJ_USER, DIAG_NONE), "peer address not allowed"
        elif self.client_ae_titles and not self._certificate_allows(assoc, calling):
            reject = (RJ_PERMANENT, RJ_USER, DIAG_CALLING)
            why = f"client certificate {limits.certificate_identities(assoc)} may not use this calling AE title"
        elif not self._admit(assoc, peer):
            reject = (RJ_TRANSIENT, RJ_PROVIDER_PRESENTATION, DIAG_LOCAL_LIMIT)
            why = f"peer already has {self.max_per_peer} associations (dicom.max_associations_per_peer)"
        if reject is not None:
            log.warning("rejected association from %s (%s) to %s: %s", calling, peer, called, why)
            self.metrics.associations.labels("rejected").inc()
            assoc.acse.send_reject(*reject)
            assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ
            return
        self.metrics.associations.labels("accepted").inc()

    def _certificate_allows(self, assoc: Any, calling: str) -> bool:
        """Mutual TLS: one of the client certificate's identities may use ``calling``."""
        for name in limits.certificate_identities(assoc):
            titles = self.client_ae_titles.get(name)
            if titles is not None and (calling in titles or "*" in titles):
                return True
        return False

    def _admit(self, assoc: Any, peer: str) -> bool:
        """Count the association against its peer's limit and give it its byte budget; False if over the limit.

        The associations counted are the live ones this method admitted (they carry a budget) that
        have not ended, found among the server's acceptor threads: nothing to decrement, nothing to
        leak when an association dies in any way. Once per association, never per instance.
        """
        budget = limits.AssociationBudget(self.settings.dicom.max_instance_bytes,
                                          self.settings.dicom.max_association_bytes)
        with self._peer_lock:
            if self.max_per_peer and self.server is not None:
                live = 0
                for other in self.server.active_associations:
                    if (other is not assoc and limits.budget_of(other) is not None
                            and str(other.requestor.address) == peer
                            and not (other.is_released or other.is_aborted or other.is_rejected)):
                        live += 1
                if live >= self.max_per_peer:
                    return False
            limits.attach(assoc, budget, early=self._early_limits)
        return True

    def _on_conn_open(self, event: evt.Event) -> None:
        set_nodelay(event.assoc)

    def _peer_allowed(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip in net for net in self.allowed_networks)

    def _on_aborted(self, event: evt.Event) -> None:
        self.metrics.associations.labels("aborted").inc()
        log.warning("association from %s (%s) aborted", event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _on_echo(self, event: evt.Event) -> int:
        self.metrics.echoes.inc()
        return int(SUCCESS)

    # --- C-STORE ---

    def _on_store(self, event: evt.Event) -> int:
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            return self._store(event)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _store(self, event: evt.Event) -> int:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title if primitive else assoc.acceptor.ae_title).strip()
        calling = str(assoc.requestor.ae_title).strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        req = event.request
        assert isinstance(req, C_STORE)
        path: Path | None = None
        pixel_offset: int | None = None
        try:
            try:
                path = Path(event.dataset_path)
            except Exception as exc:
                raise Rejected(CANNOT_UNDERSTAND, "C-STORE request without a data set") from exc
            started = time.perf_counter()
            size, discarded = limits.received_size(req, path)
            budget = limits.budget_of(assoc)
            if budget is not None and self._over_budget(assoc, budget, size, discarded):
                return int(OUT_OF_RESOURCES)
            # I/O off the GIL overlaps the Python work: hashing while the header is parsed, the
            # store's link+fsync while the event is built. Nothing is stored before the header
            # passed its checks, and nothing is published before the store's fsync returned.
            # Only when this handler runs alone: concurrent associations already overlap one
            # another's I/O, and the hand-offs to the pool would cost them CPU under the GIL.
            io = self._io if self._in_flight == 1 else _INLINE
            hashing = io.submit(hash_file, path)
            header = read_header(path, str(req.AffectedSOPClassUID or ""), str(req.AffectedSOPInstanceUID or ""), size)
            pixel_offset = header.layout.pixel_data_offset
            try:
                digest = hashing.result()
                storing = io.submit(self.store.add_file, path, digest=digest)
                sha, byte_size = digest
                received = self._event(header, sha, byte_size, self.store.uri_for(sha), calling, called, peer)
                stored = storing.result()
            except OSError as exc:
                log.error("store write failed (%s); answering 0xA700", type(exc).__name__)
                self.metrics.failures.labels(f"0x{OUT_OF_RESOURCES:04X}").inc()
                return int(OUT_OF_RESOURCES)
            self.metrics.store_seconds.observe(time.perf_counter() - started)
            if stored.existed:
                self.metrics.duplicates.inc()
            route = Route.OFF
            if self.publisher is not None:
                try:
                    route = self.publisher.publish(self.topic, received.patient_key, received)
                except PublishFailed as exc:
                    log.error("event not published nor queued (%s); answering 0xA700", exc)
                    self.metrics.failures.labels(f"0x{OUT_OF_RESOURCES:04X}").inc()
                    return int(OUT_OF_RESOURCES)
            self.metrics.instances.labels(called).inc()
            self.metrics.bytes.labels(called).inc(stored.byte_size)
            log.debug("stored %s bytes=%d route=%s", header.sop_instance_uid, stored.byte_size, route.value)
            return int(SUCCESS)
        except Rejected as rej:
            self._reject(rej, path, pixel_offset, calling, called, peer)
            return int(rej.status)

    def _over_budget(self, assoc: Any, budget: limits.AssociationBudget, size: int, discarded: bool) -> bool:
        """Apply the size limits to an instance of ``size`` bytes; raises :class:`Rejected` (0xA700) to refuse
        it, returns True when the association was aborted (a C-STORE after the budget was spent)."""
        if budget.exhausted:
            log.warning("association from %s (%s) sent a C-STORE after its byte budget was spent: aborting",
                        assoc.requestor.ae_title, assoc.requestor.address)
            self.metrics.failures.labels(f"0x{OUT_OF_RESOURCES:04X}").inc()
            assoc.abort()
            return True
        budget.used += size
        if budget.used > budget.association_limit:
            budget.exhausted = True
            raise Rejected(OUT_OF_RESOURCES, f"association sent {budget.used} bytes, over "
                                             f"dicom.max_association_bytes ({budget.association_limit})")
        if discarded or size > budget.instance_limit:
            raise Rejected(OUT_OF_RESOURCES, f"instance of {size} bytes{' or more' if discarded else ''}, over "
                                             f"dicom.max_instance_bytes ({budget.instance_limit})")
        return False

    def _event(
        self, h: Header, sha: str, size: int, uri: str, calling: str, called: str, peer: str
    ) -> InstanceReceived:
        ds = h.dataset
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        return InstanceReceived(
            event_id=event_id_for(h.sop_instance_uid, sha),
            occurred_at=now,
            producer=self.producer_name,
            patient_key=patient_key(self._secret, text(ds, "PatientID"), text(ds, "IssuerOfPatientID")),
            sop_class_uid=h.sop_class_uid,
            sop_instance_uid=h.sop_instance_uid,
            series_instance_uid=h.series_instance_uid,
            study_instance_uid=h.study_instance_uid,
            **header_fields(ds),
            calling_ae_title=calling,
            called_ae_title=called,
            peer_address=peer,
            transfer_syntax_uid=h.transfer_syntax_uid,
            byte_size=size,
            sha256=sha,
            store_uri=uri,
            received_at=now,
            attributes=attributes_of(ds, self.routing_keywords),
            ae_pipelines=self.called_ae_titles.get(called, []),
        )

    def _reject(
        self, rej: Rejected, path: Path | None, pixel_offset: int | None, calling: str, called: str, peer: str
    ) -> None:
        status = f"0x{rej.status:04X}"
        self.metrics.failures.labels(status).inc()
        log.warning("refused C-STORE from %s (%s) to %s with %s: %s", calling, peer, called, status, rej.reason)
        payload = header_bytes(path, pixel_offset) if path is not None else b""
        if not self.keep_phi:
            payload = strip_phi(payload)
        letter = DeadLetter(
            producer=self.producer_name,
            source_topic=f"dicom:{called}",
            source_partition=-1,
            source_offset=-1,
            source_key=None,
            payload=payload,
            error_type=f"DIMSE {status}",
            error=f"{rej.reason} (calling AE {calling}, peer {peer})",
            component="ingest",
        )
        if self.publisher is not None:
            try:
                self.publisher.publish_deadletter(self.deadletter_topic, None, letter)
                self.metrics.deadletters.inc()
            except Exception as exc:
                log.error("dead letter not written: %s", type(exc).__name__)
