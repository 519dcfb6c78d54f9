"""Parse safetensors headers by hand, accepting exactly what the safetensors library accepts, and
read shard indexes with the same strict JSON.

The rules are those of ``SafeTensors::read_metadata`` in safetensors 0.8 (``safetensors/src/tensor.rs``,
parsed there by serde_json), checked against the installed library in ``tests/test_hostile_headers.py``:

* 8 bytes of little-endian length ``n`` (at most 100,000,000), then ``n`` bytes of UTF-8 JSON (no
  byte-order mark; leading and trailing space, tab, CR and LF allowed, nothing else), then the data.
* JSON as serde_json reads it: no ``NaN``/``Infinity``, no number beyond a float's range (``1e400``),
  no lone UTF-16 surrogate escape, at most 127 levels of nesting.
* The top level is an object. ``__metadata__`` is ``null`` or an object of string to string. Every
  other key is a tensor: an object with ``dtype``, ``shape`` and ``data_offsets`` (other fields are
  ignored; a field given twice is refused), or the array ``[dtype, shape, data_offsets]``. ``dtype``
  is a code safetensors knows (``"F32"``, or ``{"F32": null}``); ``shape`` an array of integers,
  ``data_offsets`` an array of two, each integer in ``[0, 2**64)`` (not a float, not ``-0``).
* Sorted by offsets, the tensors tile the data from 0 with no gap and no overlap, the shape's
  element count times the dtype's bits neither overflows 64 bits nor leaves a partial byte and
  matches the byte range, and the last tensor ends exactly at the end of the file.

streamconv refuses two things the library lets through:

* a key given twice in any JSON object (the library keeps the last tensor of a name, silently);
* a shape numpy cannot hold (a dimension of ``2**63`` or more, or non-zero dimensions whose product
  in bytes overflows ``int64``): possible only next to a zero dimension, and refused by
  ``safetensors.numpy.load_file`` too, when it builds the array; streamconv's output stores shapes
  as ``int64``.

A shard index is strict JSON too; its ``weight_map`` must be an object of string to string, and
each shard must be a plain relative path (no ``..``, not absolute) whose resolved target stays in
the checkpoint folder (see :func:`shard_path` for symlinks and the Hugging Face cache).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv.errors import CorruptCheckpointError, ShardIndexError
from streamconv.messages import quote
from streamconv.strict_json import JSONRefused, strict_json_loads

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_BYTES",
    "HeaderEntry",
    "parse_header_from",
    "parse_safetensors_header",
    "read_weight_map",
    "shard_path",
]

#: The library's cap on the header length.
MAX_HEADER_BYTES = 100_000_000
_U64 = 2**64
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_INT64_MAX = 2**63 - 1

#: Bits per element of every dtype safetensors 0.8 knows (``Dtype::bitsize``). Headers with any of
#: them parse; streamconv stores only those of :data:`streamconv.dtypes.DTYPES` and refuses the others when a
#: tensor is converted, so that ``--exclude`` can drop it.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip

@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a header, checked: data bytes ``[begin, end)`` counted from the data start."""

    name: str
    dtype_code: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_safetensors_header(path: Path) -> tuple[int, list[HeaderEntry]]:
    """Read and check one safetensors file's header.

    Returns:
        The absolute offset of the data section, and the tensors sorted by their data offsets.

    Raises:
        CorruptCheckpointError: for anything the safetensors library refuses, a duplicate key, or
            a shape numpy cannot hold (see the module docstring).
    """
    try:
        with _files.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            return parse_header_from(path, size, read)
    except OSError as exc:
        raise CorruptCheckpointError(path, f"cannot read it ({exc.strerror or exc})") from exc


def parse_header_from(path: Path, size: int, read: Callable[[int, int], bytes]) -> tuple[int, list[HeaderEntry]]:
    """:func:`parse_safetensors_header` for a file of ``size`` bytes read by ``read(offset, n)``
    (a hub file read by ranges): the 8-byte length, then, once it is within the cap and the
    file, the header itself. A ``read`` that returns fewer bytes than asked is a truncated file."""
    if size < 8:
        what = "file is empty" if size == 0 else f"file is only {size} bytes"
        raise CorruptCheckpointError(path, f"{what}, too short for a safetensors header")
    prefix = read(0, 8)
    if len(prefix) < 8:
        raise CorruptCheckpointError(path, f"only {len(prefix)} of the header's 8 length bytes could be read")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise CorruptCheckpointError(
            path, f"header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit"
        )
    if 8 + header_len > size:
        raise CorruptCheckpointError(
            path, f"header length {header_len} runs past the end of the file ({size} bytes)"
        )
    raw = read(8, header_len)
    if len(raw) < header_len:
        raise CorruptCheckpointError(path, f"the header ends after {len(raw)} of its {header_len} bytes")
    header = _decode_header(path, raw)
    data_size = size - 8 - header_len
    entries = [
        _parse_entry(path, name, entry)
        for name, entry in header.items()
        if name != "__metadata__"
    ]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_layout(path, entries, data_size)
    return 8 + header_len, entries


def _decode_header(path: Path, raw: bytes) -> dict[str, Any]:
    if raw.startswith(_BOMS):
        raise CorruptCheckpointError(
            path, "header starts with a byte-order mark; safetensors headers are UTF-8 without one"
        )
    try:
        header = strict_json_loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(path, f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except JSONRefused as exc:
        raise CorruptCheckpointError(path, f"header is not JSON as safetensors reads it ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CorruptCheckpointError(
            path, "__metadata__ is not an object of string to string (or null)"
        )
    return header


def _parse_entry(path: Path, name: str, entry: Any) -> HeaderEntry:
    def bad(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(path, f"header entry for tensor {quote(name)} {problem}")

    if isinstance(entry, list):
        if len(entry) != 3:
            raise bad(f"is an array of {len(entry)} items, not [dtype, shape, data_offsets]")
        dtype, shape, offsets = entry
    elif isinstance(entry, dict):
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise bad(f"has no {', '.join(missing)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    else:
        raise bad(f"is a {type(entry).__name__}, not an object with dtype, shape and data_offsets")
    if isinstance(dtype, dict) and len(dtype) == 1 and None in dtype.values():
        (dtype,) = dtype  # serde also reads a unit enum variant as {"F32": null}
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"has dtype {quote(str(dtype))}, not a safetensors dtype code (F32, BF16, I64, ...)")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise bad(f"has shape {quote(str(shape))}, not an array of integers from 0 to 2**64-1")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_u64, offsets))):
        raise bad(f"has data_offsets {quote(str(offsets))}, not an array of two integers from 0 to 2**64-1")
    return HeaderEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < _U64


def _check_layout(path: Path, entries: list[HeaderEntry], data_size: int) -> None:
    """The library's ``Metadata::validate`` and end-of-file check, in the order of the data."""
    expected_begin = 0
    for e in entries:
        where = f"data offsets [{e.begin}, {e.end}] of tensor {quote(e.name)}"
        if e.end > data_size:
            raise CorruptCheckpointError(
                path, f"{where} lie outside the file's {data_size}-byte data section"
            )
        if e.begin != expected_begin or e.end < e.begin:
            problem = (
                "end before they begin" if e.end < e.begin
                else f"leave a gap after byte {expected_begin}" if e.begin > expected_begin
                else f"overlap the previous tensor, which ends at byte {expected_begin}"
            )  # fmt: skip
            raise CorruptCheckpointError(
                path, f"{where} {problem}; tensors must tile the data contiguously from byte 0"
            )
        expected_begin = e.end
        _check_size(path, e)
    if expected_begin != data_size:
        raise CorruptCheckpointError(
            path, f"{data_size - expected_begin} trailing bytes after the last tensor's data (which "
            f"ends at byte {expected_begin}); the data section must end where the last tensor does",
        )


def _check_size(path: Path, e: HeaderEntry) -> None:
    label = f"tensor {quote(e.name)} of shape {list(e.shape)} and dtype {e.dtype_code}"
    numel = math.prod(e.shape)
    bits = numel * DTYPE_BITS[e.dtype_code]
    # The library multiplies dims left to right with overflow checks, so a zero dim only saves
    # the dims after it; numpy (and streamconv's int64 shapes) need every dim and the bytes of
    # the non-zero ones to fit int64.
    running = 1
    for d in e.shape:
        running *= d
        if running >= _U64:
            raise CorruptCheckpointError(path, f"{label}: its element count overflows 64 bits")
    if bits >= _U64:
        raise CorruptCheckpointError(path, f"{label}: its size in bits overflows 64 bits")
    nonzero_bytes = math.prod(d for d in e.shape if d) * max(1, DTYPE_BITS[e.dtype_code] // 8)
    if max(e.shape, default=0) > _INT64_MAX or nonzero_bytes > _INT64_MAX:
        raise CorruptCheckpointError(
            path, f"{label} is too large for numpy and for streamconv's int64 shapes"
        )
    if bits % 8:
        raise CorruptCheckpointError(path, f"{label} ends inside a byte ({bits} bits)")
    if bits // 8 != e.end - e.begin:
        raise CorruptCheckpointError(
            path, f"{label} needs {bits // 8} bytes but its data range holds {e.end - e.begin}"
        )


# --- shard indexes (model.safetensors.index.json) ---

_JSON_TYPES = {int: "a number", float: "a number", bool: "a boolean", type(None): "null",
               list: "an array", dict: "an object"}


def read_weight_map(index_path: Path) -> dict[str, str]:
    """A shard index's weight_map (``model.safetensors.index.json`` and ``pytorch_model.bin.index.json``):
    strict, capped JSON (as for headers), an object of tensor name to shard file name."""
    try:
        index = _files.read_json(index_path, error=lambda path, reason: ShardIndexError(path, f"index is {reason}"))
    except OSError as exc:
        raise ShardIndexError(index_path, f"cannot read the index ({exc.strerror or exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ShardIndexError(index_path, "index has no usable weight_map (an object of tensor name to shard file)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise ShardIndexError(
                index_path,
                f"index has no usable weight_map: tensor {quote(name)} maps to "
                f"{_JSON_TYPES.get(type(shard), 'a value')}, not to a shard file name",
            )
    return weight_map


def shard_path(index_path: Path, shard: str) -> Path:
    """The shard's path, refused unless it names a file inside the checkpoint folder (see
    :func:`streamconv._files.contained`: a Hugging Face cache snapshot may link into its ``blobs``)."""
    return _files.contained(index_path.parent, shard, named_in=index_path)
