"""Load the Avro schemas of ``schemas/`` and compute their fingerprints.

Each ``.avsc`` holds one named type; references to other files' types (by full name)
are inlined here, so every event has one standalone schema, its Parsing Canonical Form
and its CRC-64-AVRO fingerprint (the id used by the single-object encoding).
Older published versions live in ``schemas/history/<Name>.v<N>.avsc``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

NAMESPACE = "org.radstream.events"
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

_EMPTY = 0xC15D213AA4D7A795
_TABLE: list[int] = []


def _table() -> list[int]:
    if not _TABLE:
        for i in range(256):
            fp = i
            for _ in range(8):
                fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
            _TABLE.append(fp)
    return _TABLE


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint the Avro specification names CRC-64-AVRO."""
    table = _table()
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: dict[str, Any]) -> bytes:
    """8-byte little-endian CRC-64-AVRO of the schema's Parsing Canonical Form."""
    return crc64_avro(to_parsing_canonical_form(schema).encode("utf-8")).to_bytes(8, "little")


def schemas_dir() -> Path:
    """The folder holding the .avsc files (``schemas/`` of the source tree or the installed copy)."""
    return Path(str(resources.files("radstream.schemas")))


def _read_all(folder: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.avsc")):
        data = json.loads(path.read_text(encoding="utf-8"))
        full = data["name"] if "." in data["name"] else f"{data.get('namespace', NAMESPACE)}.{data['name']}"
        out[full] = data
    return out


def _inline(node: Any, library: dict[str, dict[str, Any]], seen: set[str]) -> Any:
    """Replace each reference to a named type of another file by its definition (first use only)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = node if "." in node else f"{NAMESPACE}.{node}"
        if full in seen or full not in library:
            return node
        seen.add(full)
        return _inline(library[full], library, seen)
    if isinstance(node, list):
        return [_inline(n, library, seen) for n in node]
    if isinstance(node, dict):
        t = node.get("type")
        if t in ("record", "error"):
            full = node["name"] if "." in node["name"] else f"{node.get('namespace', NAMESPACE)}.{node['name']}"
            seen.add(full)
            out = dict(node)
            out["fields"] = [{**f, "type": _inline(f["type"], library, seen)} for f in node["fields"]]
            return out
        if t == "array":
            return {**node, "items": _inline(node["items"], library, seen)}
        if t == "map":
            return {**node, "values": _inline(node["values"], library, seen)}
        if t == "enum" or t == "fixed":
            seen.add(node["name"] if "." in node["name"] else f"{node.get('namespace', NAMESPACE)}.{node['name']}")
            return node
        if isinstance(t, (dict, list)) or (isinstance(t, str) and t not in _PRIMITIVES):
            return {**node, "type": _inline(t, library, seen)}
        return node
    return node


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # short record name, e.g. "InstanceReceived"
    schema: dict[str, Any]  # standalone JSON schema
    parsed: Any  # fastavro parsed schema
    fingerprint: bytes
    version: str  # "current" or "v1", "v2", ...


def intern_field_names(node: Any) -> None:
    """Intern record field names: fastavro builds its dicts with these keys, and ``cls(**data)``
    matches interned keyword names by identity (several times faster than by comparison)."""
    if isinstance(node, list):
        for n in node:
            intern_field_names(n)
    elif isinstance(node, dict):
        for f in node.get("fields", ()):
            f["name"] = sys.intern(f["name"])
            intern_field_names(f["type"])
        for key in ("items", "values", "type"):
            if isinstance(node.get(key), (dict, list)):
                intern_field_names(node[key])


def _version(name: str, raw: dict[str, Any], library: dict[str, dict[str, Any]], version: str) -> SchemaVersion:
    standalone = _inline(raw, library, set())
    intern_field_names(standalone)
    parsed = fastavro.parse_schema(standalone)
    return SchemaVersion(name, standalone, parsed, fingerprint(standalone), version)


@cache
def current_schemas() -> dict[str, SchemaVersion]:
    """Every named type of ``schemas/`` (records and enums), standalone, by short name."""
    library = _read_all(schemas_dir())
    return {full.rsplit(".", 1)[1]: _version(full.rsplit(".", 1)[1], raw, library, "current")
            for full, raw in library.items()}


@cache
def historical_schemas() -> list[SchemaVersion]:
    """Previously published versions (``schemas/history/Name.vN.avsc``, standalone files)."""
    folder = schemas_dir() / "history"
    out = []
    library = _read_all(schemas_dir())
    for path in sorted(folder.glob("*.avsc")) if folder.is_dir() else []:
        name, _, version = path.stem.partition(".")
        out.append(_version(name, json.loads(path.read_text(encoding="utf-8")), library, version))
    return out
