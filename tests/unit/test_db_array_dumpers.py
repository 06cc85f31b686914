"""The flat array dumpers write the same bytes as psycopg's own binary list dumper."""

from __future__ import annotations

import pytest
from psycopg import adapters
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import Format

from radstream.db.array_dumpers import FLOAT8_ARRAY_OID, TEXT_ARRAY_OID, Float8ArrayBinaryDumper, TextArrayBinaryDumper

pytestmark = pytest.mark.unit


def _psycopg_bytes(oid: int, value: list[object]) -> bytes:
    tx = Transformer()
    tx.set_dumper_types([oid], Format.BINARY)
    dumped = tx.dump_sequence([value], [PyFormat.BINARY])[0]
    assert dumped is not None
    return bytes(dumped)


@pytest.mark.parametrize("value", [[], ["1.2.3"], ["a", "é ü 漢字", ""], ["x", None, "y"], [None]])
def test_text_arrays_as_psycopg_writes_them(value: list[str | None]) -> None:
    assert TextArrayBinaryDumper(list).dump(value) == _psycopg_bytes(TEXT_ARRAY_OID, list(value))


@pytest.mark.parametrize("value", [[], [1.0, 2.5, 3.0, 4.0], [0.0, -1e-300, float("inf")], [1.0, None], [7]])
def test_float8_arrays_as_psycopg_writes_them(value: list[float | None]) -> None:
    assert Float8ArrayBinaryDumper(list).dump(value) == _psycopg_bytes(FLOAT8_ARRAY_OID, list(value))


def test_registered_by_oid_only() -> None:
    # nothing registered globally by importing the module
    assert adapters.get_dumper_by_oid(TEXT_ARRAY_OID, Format.BINARY) is not TextArrayBinaryDumper
