"""Tensors through Triton's system shared memory, for a Triton server on the same host.

Instead of carrying a tensor's bytes over gRPC/HTTP, the client writes it into a POSIX shared
memory region the server has registered, and the server writes outputs into regions the client
registered; the request carries only names and sizes. One region per tensor name and client,
created at first use, grown when a larger tensor comes, reused otherwise; every region is
unregistered and destroyed by :meth:`ShmRegions.release` (a server that restarted has forgotten
them: the caller releases and the next call registers again).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_MIB = 1 << 20
_COUNTER = itertools.count()


@dataclass
class Region:
    name: str  # as registered with the server
    key: str  # the POSIX shm object, /dev/shm<key>
    size: int
    handle: Any


def _capacity(nbytes: int) -> int:
    """Regions grow in whole MiB (at least the size asked), so close sizes reuse one region."""
    return max(_MIB, -(-nbytes // _MIB) * _MIB)


class ShmUnavailable(RuntimeError):
    """The server refuses shared memory (a restricted endpoint and no token, or a wrong one)."""


def _refused(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "restricted" in msg or "access-token" in msg or "access token" in msg or "unauthori" in msg


class ShmRegions:
    """The shared-memory regions of one Triton client (``client()`` gives the tritonclient object;
    ``headers`` carry the token of Triton's restricted shared-memory endpoint)."""

    def __init__(self, client: Callable[[], Any], headers: dict[str, str] | None = None) -> None:
        self._client = client
        self.headers = headers or None
        self._regions: dict[str, Region] = {}
        self._prefix = f"rs{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def region(self, tensor: str, nbytes: int) -> Region:
        import tritonclient.utils.shared_memory as shm

        r = self._regions.get(tensor)
        if r is not None and r.size >= nbytes:
            return r
        if r is not None:
            self._drop(tensor)
        n = next(_COUNTER)
        name = f"{self._prefix}_{n}"
        size = _capacity(nbytes)
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        try:
            self._client().register_system_shared_memory(name, f"/{name}", size, headers=self.headers)
        except Exception as exc:
            shm.destroy_shared_memory_region(handle)
            if _refused(exc):
                raise ShmUnavailable(f"Triton refuses shared memory ({exc}); set triton.access_token to the "
                                     "server's token, or triton.shared_memory=off") from exc
            raise
        r = self._regions[tensor] = Region(name, f"/{name}", size, handle)
        return r

    def write(self, tensor: str, x: npt.NDArray[Any]) -> Region:
        import tritonclient.utils.shared_memory as shm

        r = self.region(tensor, x.nbytes)
        shm.set_shared_memory_region(r.handle, [x])
        return r

    @staticmethod
    def read(r: Region, dtype: npt.DTypeLike, shape: list[int]) -> npt.NDArray[Any]:
        """A copy of an output (the region is reused by the next call)."""
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(r.handle, np.dtype(dtype), shape), copy=True)

    def _drop(self, tensor: str) -> None:
        import tritonclient.utils.shared_memory as shm

        r = self._regions.pop(tensor)
        with contextlib.suppress(Exception):  # the server may be gone or have restarted: nothing to unregister
            self._client().unregister_system_shared_memory(r.name, headers=self.headers)
        shm.destroy_shared_memory_region(r.handle)

    def release(self) -> None:
        for tensor in list(self._regions):
            self._drop(tensor)

    def __len__(self) -> int:
        return len(self._regions)
