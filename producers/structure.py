"""A structural check of a received data set that never reads element values.

pydicom is lenient with truncated input (it silently stops at the end of the file), so
before an instance is acknowledged its top-level elements are walked by their lengths:
every defined length must fit, every undefined-length sequence must be closed, and the
data set must end exactly at the end of the file. Pixel data is skipped by seeking, so
the cost does not depend on the image size.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_DEPTH = 64


class MalformedDataset(ValueError):
    """The bytes are not a complete, well-formed data set."""


@dataclass(frozen=True, slots=True)
class Layout:
    dataset_offset: int
    end: int
    element_count: int
    pixel_data_offset: int | None


class _Walker:
    def __init__(self, fh: BinaryIO, end: int, explicit: bool, little: bool) -> None:
        self.fh = fh
        self.end = end
        self.explicit = explicit
        self.e = "<" if little else ">"
        self.count = 0
        self.pixel_offset: int | None = None

    def _read(self, pos: int, n: int) -> bytes:
        if pos + n > self.end:
            raise MalformedDataset(f"truncated: element header at {pos} runs past the end ({self.end})")
        self.fh.seek(pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise MalformedDataset("truncated: short read")
        return data

    def _tag(self, raw: bytes, e: str) -> int:
        group, elem = struct.unpack(e + "HH", raw[:4])
        return int(group) << 16 | int(elem)

    def dataset(self, pos: int, explicit: bool, depth: int, in_item: bool, top: bool = False) -> int:
        if depth > MAX_DEPTH:
            raise MalformedDataset("sequences nested too deeply")
        e = self.e
        while pos < self.end:
            head = self._read(pos, 8)
            tag = self._tag(head, e)
            if tag == ITEM_END:
                if not in_item:
                    raise MalformedDataset("item delimiter outside an item")
                return pos + 8
            if tag in (ITEM, SEQ_END):
                raise MalformedDataset(f"unexpected delimiter ({tag:08X}) in a data set")
            if top:
                self.count += 1
                if tag in PIXEL_DATA_TAGS and self.pixel_offset is None:
                    self.pixel_offset = pos
            vr = head[4:6]
            if explicit and vr.isalpha() and vr.isupper():
                if vr in LONG_VRS:
                    length = struct.unpack(e + "L", self._read(pos + 8, 4))[0]
                    start = pos + 12
                else:
                    length = struct.unpack(e + "H", head[6:8])[0]
                    start = pos + 8
            elif explicit:
                raise MalformedDataset(f"invalid VR at offset {pos}")
            else:
                length = struct.unpack(e + "L", head[4:8])[0]
                start = pos + 8
            if length == UNDEFINED:
                # UN with undefined length is encoded implicit VR little endian inside
                inner_explicit = explicit and vr != b"UN"
                pos = self.sequence(start, inner_explicit, depth + 1)
            else:
                pos = start + int(length)
                if pos > self.end:
                    raise MalformedDataset(f"truncated: element ({tag:08X}) needs {pos - self.end} more bytes")
        if in_item:
            raise MalformedDataset("truncated: item not closed")
        return pos

    def sequence(self, pos: int, explicit: bool, depth: int) -> int:
        while True:
            head = self._read(pos, 8)
            tag = self._tag(head, self.e)
            length = struct.unpack(self.e + "L", head[4:8])[0]
            if tag == SEQ_END:
                return pos + 8
            if tag != ITEM:
                raise MalformedDataset(f"expected an item, found ({tag:08X}) at {pos}")
            if length == UNDEFINED:
                pos = self.dataset(pos + 8, explicit, depth, in_item=True)
            else:
                pos = pos + 8 + int(length)
                if pos > self.end:
                    raise MalformedDataset("truncated: item runs past the end")


def file_meta_end(fh: BinaryIO) -> int:
    """Offset of the data set after the preamble and the group 0002 file meta (explicit VR LE)."""
    fh.seek(128)
    if fh.read(4) != b"DICM":
        raise MalformedDataset("no DICOM preamble")
    pos = 132
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            return pos
        vr = head[4:6]
        if vr in LONG_VRS:
            raw = fh.read(4)
            if len(raw) != 4:
                raise MalformedDataset("truncated file meta")
            pos += 12 + struct.unpack("<L", raw)[0]
        else:
            pos += 8 + struct.unpack("<H", head[6:8])[0]


def check_layout(fh: BinaryIO, dataset_offset: int, size: int, transfer_syntax: str) -> Layout:
    """Walk the data set stored in ``fh`` from ``dataset_offset`` to ``size``."""
    if size <= dataset_offset:
        raise MalformedDataset("zero-length data set")
    if transfer_syntax == DEFLATED:
        fh.seek(dataset_offset)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = io.BytesIO()
        try:
            while chunk := fh.read(1 << 20):
                inflated.write(inflater.decompress(chunk))
        except zlib.error as exc:
            raise MalformedDataset(f"corrupt deflate stream: {exc}") from exc
        if not inflater.eof:
            raise MalformedDataset("truncated deflate stream")
        total = inflated.tell()
        inner = _Walker(inflated, total, explicit=True, little=True)
        if inner.dataset(0, True, 0, in_item=False, top=True) != total or inner.count == 0:
            raise MalformedDataset("zero-length or incomplete deflated data set")
        return Layout(dataset_offset, size, inner.count, None)
    explicit = transfer_syntax != "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    walker = _Walker(fh, size, explicit, little)
    end = walker.dataset(dataset_offset, explicit, 0, in_item=False, top=True)
    if end != size:
        raise MalformedDataset("data set does not end at the end of the stream")
    if walker.count == 0:
        raise MalformedDataset("zero-length data set")
    return Layout(dataset_offset, size, walker.count, walker.pixel_offset)
