"""zstd frames in and out of preallocated buffers, with this thread's compressors and decompressor
(streamconv/format/codec.py and nibbles.py code their bodies with them)."""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from streamconv.buffers import thread_buffer

__all__ = ["RUNS_PARAMETERS", "TUNED_PARAMETERS", "checked_frame", "compress_into", "compressor", "decompress_into"]

#: zstd with almost no match finding: on float byte planes LZ matches only get in the way, and
#: without them zstd is a fast Huffman coder (measured: benchmarks/codec_choice.py).
TUNED_PARAMETERS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_FAST, min_match=7, search_log=1, hash_log=6, chain_log=6,
    window_log=17, write_content_size=True, write_checksum=False)
#: A bit-split plane's low part, nearly all zeros: zstd level 1 codes it as runs; the tuned coder's
#: window, so readers' decompressors need no more memory (level 1's 1 MiB window: +1 MiB per thread).
RUNS_PARAMETERS = zstandard.ZstdCompressionParameters.from_level(
    1, window_log=17, write_content_size=True, write_checksum=False)
_MERGE_PIECE = 64 * 1024  # a bit-split plane's low part is decoded and merged this much at a time
_local = threading.local()


def compressor(level: int | str | None) -> zstandard.ZstdCompressor:
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


def compress_into(compressor: zstandard.ZstdCompressor, plane: np.ndarray, target: np.ndarray) -> int:
    """Compress ``plane`` as one frame into ``target``; its length, or ``target.size`` if it does not fit."""
    if not plane.size:  # a stream_reader over no bytes never returns
        frame = np.frombuffer(compressor.compress(b""), np.uint8)
        if frame.size >= target.size:
            return target.size
        target[: frame.size] = frame
        return frame.size
    got = 0
    with compressor.stream_reader(plane.data, size=plane.size, read_size=plane.size) as reader:
        view = target.data
        while got < target.size:
            step = reader.readinto(view[got:])
            if not step:
                return got
            got += step
    return target.size


def checked_frame(body: np.ndarray, size: int) -> np.ndarray:
    try:
        declared = zstandard.frame_content_size(body.data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if declared != size:
        raise ValueError(f"zstd frame declares {declared} bytes, expected {size}"
                         if declared >= 0 else "zstd frame does not declare its size")
    return body


def decompress_into(frame: np.ndarray, target: np.ndarray, *, merge: bool = False) -> None:
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
