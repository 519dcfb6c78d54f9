"""How one chunk's elements become the bytes of the Parquet ``data`` column, and back.

A chunk of ``n`` elements of ``k`` bytes is first split into ``k`` byte planes of ``n`` bytes
(streamconv/planes.py, which also defines the entropy bound the coders are measured against).

Payload layout, format version 3 (what :func:`encode` writes):

- compression ``none``: the planes, concatenated (plane 0 first): ``k * n`` bytes.
- compression ``zstd``: a header, then one body per plane, in plane order, nothing between::

      coder[k]    k bytes, one per plane: 0 = stored (the body is the plane's n bytes as they
                  are), 1 = zstd (the body is one zstd frame whose header declares a content
                  size of n; no frame checksum, the format's checksum column covers the chunk),
                  2 = bit-split zstd (version 3; below)
      length[k]   k unsigned 64-bit little-endian integers: the byte length of each body
      body[0] .. body[k-1]

  The payload is exactly ``9 * k + sum(length)`` bytes; a stored body is exactly ``n`` bytes.
  An empty chunk is ``k`` stored planes of length 0.

A bit-split body codes the plane's bytes ``b`` as two zstd frames (each declaring content size
``n``, no checksum): ``shift`` (1 byte, 1 to 7), ``high_length`` (unsigned 64-bit little-endian),
then a frame of ``b >> shift`` that is ``high_length`` bytes long, then a frame of
``b & (2**shift - 1)`` filling the rest of the body. The plane is ``(high << shift) | low``.

Format version 2 is version 3 without coder 2. Format version 1: compression ``none`` as above;
``zstd`` is all planes, concatenated, as one zstd frame with content size ``k * n`` (and a
content checksum). :func:`decode` reads all three.

Which coder each plane gets (:func:`encode`, default ``level=None``, chosen by measurement in
benchmarks/codec_choice.py): a plane whose sampled order-0 entropy exceeds
``STORE_ABOVE_BITS`` bits per byte is stored; other planes get zstd with match finding starved
(:data:`TUNED_PARAMETERS`), which turns zstd into a Huffman coder of literals, with a Huffman
table per 128 KiB block. A plane whose sampled bytes nearly all (:data:`SPLIT_SHARE`) end in
the same ``shift`` zero bits is bit-split instead (float16 cast from bfloat16; why: docs/format.md).
A plane whose coding is not smaller than the plane is stored too. An explicit ``level=N`` compresses
every plane with zstd level N (stored only if that is no smaller).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import zstandard

from streamconv.buffers import thread_buffer
from streamconv.format.planes import join_into, split

__all__ = ["FORMAT_VERSIONS", "SPLIT_SHARE", "STORE_ABOVE_BITS", "TUNED_PARAMETERS", "decode", "decode_into",
           "encode"]

#: Payload layouts :func:`decode` understands.
FORMAT_VERSIONS = (1, 2, 3, 4)
#: zstd with almost no match finding: on float byte planes LZ matches only get in the way, and
#: without them zstd is a fast Huffman coder (measured: benchmarks/codec_choice.py).
TUNED_PARAMETERS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_FAST, min_match=7, search_log=1, hash_log=6, chain_log=6,
    window_log=17, write_content_size=True, write_checksum=False)
#: A plane whose sample has more order-0 entropy than this (bits per byte) is stored as it is:
#: zstd would store its blocks raw anyway (it needs a gain of 1/64), after spending time finding out.
STORE_ABOVE_BITS = 7.86
#: The share of a plane's sampled bytes that must end in ``shift`` zero bits for the bit-split coder.
SPLIT_SHARE = 0.99
_SAMPLE = 8192  # bytes sampled (evenly spaced) per plane to estimate its entropy
_STORED, _ZSTD, _SPLIT = 0, 1, 2
#: A bit-split plane's low part, nearly all zeros: zstd level 1 codes it as runs; the tuned coder's
#: window, so readers' decompressors need no more memory (level 1's 1 MiB window: +1 MiB per thread).
RUNS_PARAMETERS = zstandard.ZstdCompressionParameters.from_level(
    1, window_log=17, write_content_size=True, write_checksum=False)
_MERGE_PIECE = 64 * 1024  # a bit-split plane's low part is decoded and merged this much at a time
_local = threading.local()


def _compressor(level: int | str | None) -> zstandard.ZstdCompressor:
    """This thread's compressor: ``None`` the tuned one, ``"runs"`` RUNS_PARAMETERS, an int that level."""
    # A ZstdCompressor must not be shared between threads: one per thread and level.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        if level is None or level == "runs":
            params = TUNED_PARAMETERS if level is None else RUNS_PARAMETERS
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
        else:
            cache[level] = zstandard.ZstdCompressor(level=int(level), write_checksum=False)
    return cache[level]


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


def encode(data: np.ndarray, compression: str, level: int | None = None) -> np.ndarray:
    """Encode a chunk's elements as a format-version-3 payload (layout: module docstring).

    Args:
        data: The chunk's elements (any shape; flattened in C order).
        compression: ``zstd`` or ``none``.
        level: ``None`` (default) for the tuned coder per plane (stored, starved zstd or
            bit-split); an int for zstd at that level (-7..22) on every plane.

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
    compressor = _compressor(level)
    frames = thread_buffer("frames", k * n)
    coders, bodies, used = np.empty(k, np.uint8), list[np.ndarray](), 0
    for j, plane in enumerate(planes):
        size, coder = n, _STORED  # a coding that does not fit in fewer bytes than the plane: stored
        counts = _sampled_histogram(plane) if level is None else None
        shift = _common_zero_bits(counts) if counts is not None else 0
        if shift:
            size, coder = _split_into(compressor, plane, shift, frames[used : used + n]), _SPLIT
        elif n and not (counts is not None and _looks_random(counts)):
            size, coder = _compress_into(compressor, plane, frames[used : used + n]), _ZSTD
        coders[j] = coder if size < n else _STORED
        bodies.append(frames[used : used + size] if size < n else plane)
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
    high_size = _compress_into(compressor, high, target[head:])
    if head + high_size >= target.size:
        return target.size
    low_size = _compress_into(_compressor("runs"), low, target[head + high_size :])
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


def _compress_into(compressor: zstandard.ZstdCompressor, plane: np.ndarray, target: np.ndarray) -> int:
    """Compress ``plane`` as one frame into ``target``; its length, or ``target.size`` if it does not fit."""
    got = 0
    with compressor.stream_reader(plane.data, size=plane.size, read_size=plane.size) as reader:
        view = target.data
        while got < target.size:
            step = reader.readinto(view[got:])
            if not step:
                return got
            got += step
    return target.size


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
    planes are read from the payload where they lie; a one-byte dtype's one plane is decompressed
    straight into ``out``. ``payload`` may be bytes, a memoryview or a pyarrow Buffer. Releases the
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
        return [(_ZSTD, _checked_frame(buf, k * n))]
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
        if coder not in (_STORED, _ZSTD, _SPLIT) or (coder == _SPLIT and version < 3):
            raise ValueError(f"plane {j} has unknown coder {coder}")
        parts.append((coder, body if coder == _STORED else _checked_frame(body, n) if coder == _ZSTD
                      else _checked_split(body, n)))
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
    _checked_frame(body[9 : 9 + high_size], n)
    _checked_frame(body[9 + high_size :], n)
    return body


def _checked_frame(body: np.ndarray, size: int) -> np.ndarray:
    try:
        declared = zstandard.frame_content_size(body.data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if declared != size:
        raise ValueError(f"zstd frame declares {declared} bytes, expected {size}"
                         if declared >= 0 else "zstd frame does not declare its size")
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
    """A zstd or bit-split body's bytes, into ``target``."""
    if coder == _ZSTD:
        _decompress_into(body, target)
        return
    shift, high_size = int(body[0]), int(body[1:9].view("<u8")[0])
    _decompress_into(body[9:9 + high_size], target)
    np.multiply(target, np.uint8(1 << shift), out=target)  # << shift, vectorized (numpy's uint8 shift is not)
    _decompress_into(body[9 + high_size:], target, merge=True)


def _decompress_into(frame: np.ndarray, target: np.ndarray, *, merge: bool = False) -> None:
    """Decompress ``frame`` into ``target``; with ``merge``, OR it into ``target`` instead, through a
    small buffer (a bit-split plane's low part: no second plane-sized scratch area per thread)."""
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    piece = thread_buffer("merge", _MERGE_PIECE) if merge else None
    got = 0
    try:
        with decompressor.stream_reader(frame.data) as reader:
            while got < target.size:
                if piece is None:
                    step = reader.readinto(target.data[got:])
                else:
                    step = reader.readinto(piece.data[: min(piece.size, target.size - got)])
                    np.bitwise_or(target[got:got + step], piece[:step], out=target[got:got + step])
                if not step:
                    break
                got += step
            extra = reader.read(1) if got == target.size else b""  # reaches the frame's end (checksum)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame is damaged ({exc})") from None
    if got != target.size or extra:
        raise ValueError(f"zstd frame holds {'more than ' if extra else ''}{got} bytes, expected {target.size}")
