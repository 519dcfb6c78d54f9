"""The nibble-split body (format version 5, coder 3): a plane's nibbles, paired.

For a plane of ``n`` bytes ``b`` (``b[n] = 0`` when ``n`` is odd) and ``m = ceil(n / 2)``:
``high[i] = (b[2i] & 0xF0) | (b[2i+1] >> 4)`` and ``low[i] = ((b[2i] & 0x0F) << 4) | (b[2i+1] & 0x0F)``;
back, ``b[2i] = (high[i] & 0xF0) | (low[i] >> 4)`` and ``b[2i+1] = (high[i] << 4) | (low[i] & 0x0F)``.
The body: ``high_length`` (unsigned 64-bit little-endian), a zstd frame of ``high`` (content size
``m``, no checksum) that is ``high_length`` bytes long, then ``low``: exactly ``m`` bytes, stored.
For an odd ``n`` the padding nibbles (``high[m-1] & 0x0F``, ``low[m-1] & 0x0F``) are 0.

Why: int8 codes' low nibbles are near uniform, so coding them costs zstd's Huffman decoder its time
and saves nothing; their high nibbles, two to a byte, are half as many symbols to decode.

Split and join run in the compiled module ``_dequant`` (plain C, any CPU), imported at the first
call (reading an output without coder 3 loads no compiled code); where it is not built, in numpy,
to the same bits, eight bytes at a time (numpy's uint8 shifts are not vectorized).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import zstandard

from streamconv.buffers import thread_buffer
from streamconv.format import frames
from streamconv.format.planes import join_into, split

__all__ = ["checked_body", "compiled_module", "decode_body", "encode_body", "join_nibbles", "low_bits", "split_nibbles"]

_HIGH, _LOW = np.uint64(0xF0F0F0F0F0F0F0F0), np.uint64(0x0F0F0F0F0F0F0F0F)
_UNLOADED = object()
_KERNEL: Any = _UNLOADED


def compiled_module() -> ModuleType | None:
    """The compiled module ``_dequant`` (the nibbles' split and join, any CPU; int8 dequantizing,
    :mod:`streamconv.format.quantized`), or ``None`` where it was not built."""
    try:
        from streamconv.format import _dequant
    except ImportError:
        return None
    return _dequant


def _kernel() -> ModuleType | None:
    """:func:`compiled_module`, imported at the first call."""
    global _KERNEL
    if _KERNEL is _UNLOADED:
        _KERNEL = compiled_module()
    return _KERNEL


def low_bits(counts: np.ndarray) -> float:
    """The order-0 entropy (bits) of the low nibbles of bytes with histogram ``counts`` (256 counts)."""
    nibbles = counts.reshape(16, 16).sum(axis=0)
    p = nibbles[nibbles > 0] / nibbles.sum()
    return float(-(p * np.log2(p)).sum())


def split_nibbles(plane: np.ndarray, high: np.ndarray, low: np.ndarray) -> None:
    """``high`` and ``low`` (``ceil(plane.size / 2)`` bytes each) from ``plane`` (uint8)."""
    kernel = _kernel()
    if kernel is not None:
        kernel.split_nibbles(plane, high, low)
        return
    pairs = plane.size // 2
    even, odd = split(plane[: 2 * pairs].view("<u2"), "nibble-planes")  # b[2i] and b[2i+1]
    _pair(even, odd, high[:pairs], low[:pairs])
    if plane.size % 2:
        high[pairs], low[pairs] = plane[-1] & 0xF0, (plane[-1] << 4) & 0xFF


def join_nibbles(high: np.ndarray, low: np.ndarray, out: np.ndarray) -> None:
    """``out`` (uint8) from ``high`` and ``low``, ``ceil(out.size / 2)`` bytes each."""
    kernel = _kernel()
    if kernel is not None:
        kernel.join_nibbles(high, low, out)
        return
    pairs = out.size // 2
    scratch = thread_buffer("nibble-planes", 2 * pairs)
    even, odd = scratch[:pairs], scratch[pairs : 2 * pairs]
    _pair(high[:pairs], low[:pairs], even, odd)  # the same nibble moves, mirrored
    join_into([even, odd], out[: 2 * pairs].view("<u2"))
    if out.size % 2:
        out[-1] = (high[pairs] & 0xF0) | (low[pairs] >> 4)


def _pair(first: np.ndarray, second: np.ndarray, high: np.ndarray, low: np.ndarray) -> None:
    """``high = (first & 0xF0) | (second >> 4)``, ``low = (first << 4) | (second & 0x0F)``, bytewise:
    on 64-bit words where the sizes allow, masking what crosses into the next byte."""
    whole = first.size - first.size % 8
    a, b = first[:whole].view("<u8"), second[:whole].view("<u8")
    hi, lo = high[:whole].view("<u8"), low[:whole].view("<u8")
    np.right_shift(b, np.uint64(4), out=hi)
    np.bitwise_and(hi, _LOW, out=hi)
    np.bitwise_or(hi, np.bitwise_and(a, _HIGH, out=lo), out=hi)  # lo as scratch, written below
    np.multiply(a, np.uint64(16), out=lo)  # << 4
    np.bitwise_and(lo, _HIGH, out=lo)
    np.bitwise_or(lo, np.bitwise_and(b, _LOW), out=lo)
    x, y = first[whole:], second[whole:]
    high[whole:] = (x & 0xF0) | (y >> 4)
    low[whole:] = ((x << 4) & 0xFF) | (y & 0x0F)


def encode_body(compressor: zstandard.ZstdCompressor, plane: np.ndarray, target: np.ndarray) -> int:
    """Code ``plane`` as a body into ``target``; its length, or ``target.size`` if it does not fit."""
    m, head = -(-plane.size // 2), 8
    if target.size <= head + m:
        return target.size
    parts = thread_buffer("bitsplit", 2 * m)
    high, low = parts[:m], parts[m : 2 * m]
    split_nibbles(plane, high, low)
    high_size = frames.compress_into(compressor, high, target[head : target.size - m])
    if head + high_size + m >= target.size:
        return target.size
    target[:head] = np.array([high_size], "<u8").view(np.uint8)
    target[head + high_size : head + high_size + m] = low
    return head + high_size + m


def checked_body(body: np.ndarray, n: int) -> np.ndarray:
    """``body``, once its header, frame and stored low nibbles are found to hold a plane of ``n`` bytes."""
    m = -(-n // 2)
    if body.size < 8:
        raise ValueError(f"nibble-split body of {body.size} bytes is shorter than its 8-byte header")
    high_size = int(body[:8].view("<u8")[0])
    if high_size > body.size - 8:
        raise ValueError(f"nibble-split body's frame of {high_size} bytes runs past its end")
    if body.size - 8 - high_size != m:
        raise ValueError(f"nibble-split body stores {body.size - 8 - high_size} bytes of low nibbles, expected {m}")
    frames.checked_frame(body[8 : 8 + high_size], m)
    if n % 2 and body[-1] & 0x0F:
        raise ValueError("nibble-split body's padding nibble is not 0")
    return body


def decode_body(body: np.ndarray, target: np.ndarray) -> None:
    """A checked body's plane into ``target``: the high nibbles decompressed into this thread's
    scratch, then joined with the stored low ones straight into ``target``."""
    m, high_size = -(-target.size // 2), int(body[:8].view("<u8")[0])
    high = thread_buffer("nibbles", m)[:m]
    frames.decompress_into(body[8 : 8 + high_size], high)
    if target.size % 2 and high[-1] & 0x0F:
        raise ValueError("nibble-split body's padding nibble is not 0")
    join_nibbles(high, body[8 + high_size :], target)
