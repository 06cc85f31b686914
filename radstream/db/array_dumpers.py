"""Binary COPY dumpers for the sinks' one-dimensional ``text[]`` and ``float8[]`` columns.

psycopg's generic list dumper (pure Python) measures dimensions and looks up a dumper for
every element; these write the binary array format directly (header, then length-prefixed
elements), the same bytes for the flat lists the sinks store. They are registered by oid
only, so they are used where the column type is known (``Copy.set_types``), never for
query parameters.
"""

from __future__ import annotations

import struct
import weakref
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

TEXT_OID, TEXT_ARRAY_OID = 25, 1009
FLOAT8_OID, FLOAT8_ARRAY_OID = 701, 1022

_HEAD = struct.Struct(">iiIii")  # ndim, has nulls, element oid, length, lower bound
_EMPTY_HEAD = struct.Struct(">iiI")  # ndim 0
_LENGTH = struct.Struct(">i")
_FLOAT8 = struct.Struct(">id")  # length 8, value
_NULL = _LENGTH.pack(-1)


class TextArrayBinaryDumper(Dumper):
    format = Format.BINARY
    oid = TEXT_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_HEAD.pack(0, 0, TEXT_OID)
        parts = [b""]
        nulls = 0
        for item in obj:
            if item is None:
                parts.append(_NULL)
                nulls = 1
            else:
                data = item.encode()
                parts.append(_LENGTH.pack(len(data)))
                parts.append(data)
        parts[0] = _HEAD.pack(1, nulls, TEXT_OID, len(obj), 1)
        return b"".join(parts)


class Float8ArrayBinaryDumper(Dumper):
    format = Format.BINARY
    oid = FLOAT8_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_HEAD.pack(0, 0, FLOAT8_OID)
        if None in obj:
            return _HEAD.pack(1, 1, FLOAT8_OID, len(obj), 1) + b"".join(
                [_NULL if v is None else _FLOAT8.pack(8, v) for v in obj])
        return _HEAD.pack(1, 0, FLOAT8_OID, len(obj), 1) + b"".join([_FLOAT8.pack(8, v) for v in obj])


_DONE: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def use_flat_array_dumpers(conn: psycopg.Connection[Any]) -> None:
    """Use these dumpers for binary COPY on ``conn`` (once per connection)."""
    if conn in _DONE:
        return
    conn.adapters.register_dumper(None, TextArrayBinaryDumper)
    conn.adapters.register_dumper(None, Float8ArrayBinaryDumper)
    _DONE.add(conn)
