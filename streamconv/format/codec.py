"""How one chunk's elements become the bytes of the Parquet ``data`` column, and back.

A chunk of ``n`` elements of ``k`` bytes is first split into ``k`` byte planes of ``n`` bytes
(streamconv/planes.py, which also defines the entropy bound the coders are measured against).

Payload layout, format version 5 (what :func:`encode` writes):

- compression ``none``: the planes, concatenated (plane 0 first): ``k * n`` bytes.
- compression ``zstd``: a header, then one body per plane, in plane order, nothing between::

      coder[k]    k bytes, one per plane: 0 = stored (the body is the plane's n bytes as they
                  are), 1 = zstd (the body is one zstd frame whose header declares a content
                  size of n; no frame checksum, the format's checksum column covers the chunk),
                  2 = bit-split zstd (version 3; below), 3 = nibble-split (version 5; below)
      length[k]   k unsigned 64-bit little-endian integers: the byte length of each body
      body[0] .. body[k-1]

  The payload is exactly ``9 * k + sum(length)`` bytes; a stored body is exactly ``n`` bytes.
  An empty chunk is ``k`` stored planes of length 0.

A bit-split body codes the plane's bytes ``b`` as two zstd frames (each declaring content size
``n``, no checksum): ``shift`` (1 byte, 1 to 7), ``high_length`` (unsigned 64-bit little-endian),
then a frame of ``b >> shift`` that is ``high_length`` bytes long, then a frame of
``b & (2**shift - 1)`` filling the rest of the body. The plane is ``(high << shift) | low``.

A nibble-split body codes the plane's bytes ``b`` as their paired high nibbles, zstd-compressed, and
their paired low nibbles, stored (streamconv/format/nibbles.py defines the pairing, for
``m = ceil(n / 2)`` bytes each): ``high_length`` (unsigned 64-bit little-endian), then a zstd frame
of the high nibbles (content size ``m``, no checksum) that is ``high_length`` bytes long, then the
``m`` bytes of low nibbles, as they are. For an odd ``n`` the last pair's second nibbles are 0.

Format version 4 (int8 columns, streamconv/format/quantized.py) and 3 are version 5 without coder
3; version 2 is version 3 without coder 2. Format version 1: compression ``none`` as above;
``zstd`` is all planes, concatenated, as one zstd frame with content size ``k * n`` (and a
content checksum). :func:`decode` reads them all.

Which coder each plane gets (:func:`encode`, default ``level=None``, chosen by measurement in
benchmarks/codec_choice.py): a plane whose sampled order-0 entropy exceeds
``STORE_ABOVE_BITS`` bits per byte is stored; other planes get zstd with match finding starved
(:data:`TUNED_PARAMETERS`), which turns zstd into a Huffman coder of literals, with a Huffman
table per 128 KiB block. A plane whose sampled bytes nearly all (:data:`SPLIT_SHARE`) end in
the same ``shift`` zero bits is bit-split instead (float16 cast from bfloat16; why: docs/format.md).
A plane whose coding is not smaller than the plane is stored too. An explicit ``level=N`` compresses
every plane with zstd level N (stored only if that is no smaller). With ``nibbles`` (int8 codes),
a plane whose sampled low nibbles have more than :data:`NIBBLE_ABOVE_BITS` bits of entropy is
nibble-split: 0.45% larger than zstd on real codes, decoded 1.7x as fast (docs/format.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zstandard

from streamconv.buffers import thread_buffer
from streamconv.format import frames
from streamconv.format import nibbles as nibble_split
from streamconv.format.frames import TUNED_PARAMETERS
from streamconv.format.planes import join_into, split

__all__ = ["FORMAT_VERSIONS", "NIBBLE_ABOVE_BITS", "SPLIT_SHARE", "STORE_ABOVE_BITS", "TUNED_PARAMETERS", "decode",
           "decode_into", "encode"]

#: Payload layouts :func:`decode` understands.
FORMAT_VERSIONS = (1, 2, 3, 4, 5)
#: A plane whose sample has more order-0 entropy than this (bits per byte) is stored as it is:
#: zstd would store its blocks raw anyway (it needs a gain of 1/64), after spending time finding out.
STORE_ABOVE_BITS = 7.86
#: The share of a plane's sampled bytes that must end in ``shift`` zero bits for the bit-split coder.
SPLIT_SHARE = 0.99
#: With ``nibbles``, a plane whose sampled low nibbles have more entropy than this (bits; uniform: 4)
#: is nibble-split. Real int8 codes measured 3.994 to 3.999 but for one chunk in 600 (3.80).
NIBBLE_ABOVE_BITS = 3.95
_SAMPLE = 8192  # bytes sampled (evenly spaced) per plane to estimate its entropy
_STORED, _ZSTD, _SPLIT, _NIBBLES = 0, 1, 2, 3
_SINCE = {_STORED: 2, _ZSTD: 2, _SPLIT: 3, _NIBBLES: 5}  # the format version that brought each coder


def _sampled_histogram(plane: np.ndarray) -> np.ndarray | None:
    """Byte counts of an evenly spaced sample of ``plane``; ``None`` if the plane is smaller than it."""
    return None if plane.size < _SAMPLE else np.bincount(plane[:: plane.size // _SAMPLE], minlength=256)


def _looks_random(counts: np.ndarray) -> bool:
    """Whether the sampled bytes have more than STORE_ABOVE_BITS of order-0 entropy."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) > STORE_ABOVE_BITS


def _common_zero_bits(counts: np.ndarray) -> int:
    """The most low bits (up to 7) that are zero in at least SPLIT_SHARE of the sampled bytes, or 0;
    also 0 when they are nearly all one value (plain zstd codes that as well)."""
    total = counts.sum()
    if counts.max() >= SPLIT_SHARE * total:
        return 0
    for shift in range(7, 0, -1):
        if counts[:: 1 << shift].sum() >= SPLIT_SHARE * total:  # the values with those bits zero
            return shift
    return 0


def encode(data: np.ndarray, compression: str, level: int | None = None, *, nibbles: bool = False) -> np.ndarray:
    """Encode a chunk's elements as a format-version-5 payload (layout: module docstring); without
    ``nibbles``, a version-3 one.

    Args:
        data: The chunk's elements (any shape; flattened in C order).
        compression: ``zstd`` or ``none``.
        level: ``None`` (default) for the tuned coder per plane (stored, starved zstd or
            bit-split); an int for zstd at that level (-7..22) on every plane.
        nibbles: Let the tuned coder nibble-split a plane whose low nibbles look uniform (int8 codes).

    Returns:
        The payload's bytes, as a new 1-D ``uint8`` array (bytes-like: ``bytes(payload)`` copies it).

    Thread-safe: each thread has its own compressors and scratch buffers. The payload is the only
    memory an encode allocates: planes and zstd frames are built in this thread's reused buffers
    (a conversion's fresh temporaries otherwise fragment the heap between the payloads that wait to
    be written: 8.6 GB checkpoint, 73 MiB free but resident inside malloc's arenas at the peak).
    """
    planes = split(np.ascontiguousarray(data).reshape(-1), "encode")
    if compression == "none":
        return planes.reshape(-1).copy()
    if compression != "zstd":
        raise ValueError(f"unknown compression {compression!r}")
    k, n = planes.shape
    compressor = frames.compressor(level)
    bodies_room = thread_buffer("frames", k * n)
    coders, bodies, used = np.empty(k, np.uint8), list[np.ndarray](), 0
    for j, plane in enumerate(planes):
        size, coder = n, _STORED  # a coding that does not fit in fewer bytes than the plane: stored
        counts = _sampled_histogram(plane) if level is None else None
        shift = _common_zero_bits(counts) if counts is not None else 0
        random = counts is not None and _looks_random(counts)
        room = bodies_room[used : used + n]
        if shift:
            size, coder = _split_into(compressor, plane, shift, room), _SPLIT
        elif nibbles and counts is not None and not random and nibble_split.low_bits(counts) > NIBBLE_ABOVE_BITS:
            size, coder = nibble_split.encode_body(compressor, plane, room), _NIBBLES
        elif n and not random:
            size, coder = frames.compress_into(compressor, plane, room), _ZSTD
        coders[j] = coder if size < n else _STORED
        bodies.append(bodies_room[used : used + size] if size < n else plane)
        used += size if size < n else 0
    lengths = np.array([body.size for body in bodies], "<u8")
    payload = np.empty(9 * k + int(lengths.sum()), np.uint8)
    payload[:k], payload[k : 9 * k] = coders, lengths.view(np.uint8)
    start = 9 * k
    for body in bodies:  # the one copy of the output
        payload[start : start + body.size] = body
        start += body.size
    return payload


def _split_into(compressor: zstandard.ZstdCompressor, plane: np.ndarray, shift: int, target: np.ndarray) -> int:
    """Code ``plane`` as a bit-split body into ``target``; its length, or ``target.size`` if it does not fit."""
    n, head = plane.size, 9
    if target.size <= head:
        return target.size
    parts = thread_buffer("bitsplit", 2 * n)
    high, low = parts[:n], parts[n : 2 * n]
    _shift_bytes_right(plane, shift, high)
    np.bitwise_and(plane, (1 << shift) - 1, out=low)
    high_size = frames.compress_into(compressor, high, target[head:])
    if head + high_size >= target.size:
        return target.size
    low_size = frames.compress_into(frames.compressor("runs"), low, target[head + high_size :])
    if head + high_size + low_size >= target.size:
        return target.size
    target[0] = shift
    target[1:head] = np.array([high_size], "<u8").view(np.uint8)
    return head + high_size + low_size


def _shift_bytes_right(plane: np.ndarray, shift: int, out: np.ndarray) -> None:
    """``out = plane >> shift`` byte by byte; eight bytes at a time (numpy's uint8 shift is not
    vectorized: 17x slower), masking the bits that cross into the byte below."""
    whole = plane.size - plane.size % 8
    mask = np.uint64(int.from_bytes(bytes([0xFF >> shift]) * 8, "little"))
    words = out[:whole].view("<u8")
    np.right_shift(plane[:whole].view("<u8"), np.uint64(shift), out=words)
    np.bitwise_and(words, mask, out=words)
    np.right_shift(plane[whole:], shift, out=out[whole:])


def decode(payload: Any, dtype: np.dtype, count: int, compression: str,
           format_version: int = 3) -> np.ndarray:
    """Decode one ``data`` value into a new array of ``count`` elements of ``dtype``.

    The payload is checked against ``count`` before anything of that size is allocated.
    Raises ValueError for a payload that does not decode to exactly ``count`` elements.
    """
    dtype = np.dtype(dtype)
    sources = _parse(_as_bytes(payload), dtype.itemsize, count, compression, format_version)
    out = np.empty(count, dtype)
    _fill(sources, out)
    return out


def decode_into(payload: Any, out: np.ndarray, compression: str, format_version: int = 3) -> None:
    """Decode one ``data`` value straight into ``out``, a preallocated 1-D contiguous array.

    ``out``'s dtype and size say what the payload must hold (a slice of the final tensor buffer,
    e.g. ``tensor.reshape(-1)[offset:offset + count]``). zstd planes are decompressed into a
    per-thread scratch buffer, then every plane is interleaved into ``out`` in one pass; stored
    planes are read from the payload where they lie; a one-byte dtype's one zstd plane is
    decompressed straight into ``out`` (a nibble-split one: its high nibbles into scratch, then
    joined with the low ones into ``out``). ``payload`` may be bytes, a memoryview or a pyarrow Buffer. Releases the
    GIL while decompressing and interleaving, so threads scale.

    Raises:
        ValueError: the payload is damaged or does not hold ``out.size`` elements (the reason is
            in the message); nothing larger than ``out`` is allocated for a damaged payload.
    """
    if out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable, contiguous 1-D array")
    sources = _parse(_as_bytes(payload), out.dtype.itemsize, out.size, compression, format_version)
    _fill(sources, out)


def _as_bytes(payload: Any) -> np.ndarray:
    return np.frombuffer(payload, np.uint8)  # no copy: bytes, memoryview, pyarrow Buffer


def _parse(buf: np.ndarray, k: int, n: int, compression: str, version: int) -> list[tuple[int, np.ndarray]]:
    """Check a payload against ``k * n`` bytes of planes; return ``(coder, bytes)`` per part.

    A part is one plane, except for a version-1 zstd payload, whose one frame holds all planes.
    """
    if version not in FORMAT_VERSIONS:
        raise ValueError(f"unknown format version {version}")
    if compression == "none":
        if buf.size != k * n:
            raise ValueError(f"chunk holds {buf.size} bytes, expected {k * n}")
        return [(_STORED, buf)]
    if compression != "zstd":
        raise ValueError(f"unknown compression {compression!r}")
    if version == 1:
        return [(_ZSTD, frames.checked_frame(buf, k * n))]
    head = 9 * k
    if buf.size < head:
        raise ValueError(f"payload of {buf.size} bytes is shorter than its {head}-byte header")
    coders, lengths = buf[:k].tolist(), buf[k:head].view("<u8").tolist()  # Python ints: no overflow, no slow tiny reductions
    if sum(lengths) != buf.size - head:
        raise ValueError(f"plane lengths {lengths} do not add up to the {buf.size - head} bytes after the header")
    parts, start = [], head
    for j, (coder, length) in enumerate(zip(coders, lengths, strict=True)):
        body = buf[start:start + length]
        start += length
        if coder == _STORED and length != n:
            raise ValueError(f"stored plane {j} holds {length} bytes, expected {n}")
        if _SINCE.get(coder, version + 1) > version:
            raise ValueError(f"plane {j} has unknown coder {coder}")
        checked = {_STORED: None, _ZSTD: frames.checked_frame, _SPLIT: _checked_split,
                   _NIBBLES: nibble_split.checked_body}[coder]
        parts.append((coder, body if checked is None else checked(body, n)))
    return parts


def _checked_split(body: np.ndarray, n: int) -> np.ndarray:
    """A bit-split body whose shift and two frames hold together (layout: module docstring)."""
    if body.size < 9:
        raise ValueError(f"bit-split body of {body.size} bytes is shorter than its 9-byte header")
    shift, high_size = int(body[0]), int(body[1:9].view("<u8")[0])
    if not 1 <= shift <= 7:
        raise ValueError(f"bit-split body has shift {shift}, not 1 to 7")
    if high_size > body.size - 9:
        raise ValueError(f"bit-split body's first frame of {high_size} bytes runs past its end")
    frames.checked_frame(body[9 : 9 + high_size], n)
    frames.checked_frame(body[9 + high_size :], n)
    return body


def _fill(parts: list[tuple[int, np.ndarray]], out: np.ndarray) -> None:
    """Decompress ``parts`` (from :func:`_parse`) and interleave their planes into ``out``."""
    k, n = out.dtype.itemsize, out.size
    if n == 0:
        return
    if k == 1 and parts[0][0] != _STORED:  # one plane: decompressed where it belongs, no copy
        _decode_plane(*parts[0], out.view(np.uint8))
        return
    part_size = k * n // len(parts)  # k planes in k parts, or all planes in one part
    scratch = thread_buffer("decode", part_size * sum(coder != _STORED for coder, _ in parts))
    used, planes = 0, list[np.ndarray]()
    for coder, body in parts:
        if coder != _STORED:
            target, used = scratch[used:used + part_size], used + part_size
            _decode_plane(coder, body, target)
            body = target
        planes.extend(body.reshape(-1, n))
    join_into(planes, out)


def _decode_plane(coder: int, body: np.ndarray, target: np.ndarray) -> None:
    """A zstd, bit-split or nibble-split body's bytes, into ``target``."""
    if coder == _ZSTD:
        frames.decompress_into(body, target)
        return
    if coder == _NIBBLES:
        nibble_split.decode_body(body, target)
        return
    shift, high_size = int(body[0]), int(body[1:9].view("<u8")[0])
    frames.decompress_into(body[9:9 + high_size], target)
    np.multiply(target, np.uint8(1 << shift), out=target)  # << shift, vectorized (numpy's uint8 shift is not)
    frames.decompress_into(body[9 + high_size:], target, merge=True)
