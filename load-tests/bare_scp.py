"""A pynetdicom C-STORE SCP that stores nothing: the floor of any pynetdicom SCP (ingest_bench --floor).

Each data set is received to a temporary file (as the ingest SCP receives it) and deleted;
the handler answers success at once: no parsing, hashing, fsync or event.

    python load-tests/bare_scp.py PORT INCOMING_DIR [--event-driven]
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer


def main() -> None:
    port, incoming = int(sys.argv[1]), sys.argv[2]
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = incoming
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 4 * 1024 * 1024
    ae.maximum_associations = 64
    ae.require_called_aet = False
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])

    def on_store(event: evt.Event) -> int:
        os.unlink(event.dataset_path)
        return 0x0000

    kwargs: dict[str, Any] = {}
    if "--event-driven" in sys.argv:
        from radstream.producers.reactor import RequestHandler

        kwargs["request_handler"] = RequestHandler
    server = ae.make_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                            server_class=ThreadedAssociationServer, **kwargs)
    server.serve_forever()


if __name__ == "__main__":
    main()
