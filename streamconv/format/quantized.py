"""Reading int8 chunks (format version 4): their scales checked against their codes, then dequantized.

A quantized chunk holds whole rows of a 2-D tensor of ``cols`` columns: ``data`` is the rows' int8
codes, ``scales`` one float16 scale per block of ``block`` consecutive elements of a row (the last
block of a row is shorter when ``block`` does not divide ``cols``), row after row. An element is
``code * scale``: exact in float32 (8 bits times 11), rounded once to nearest even for float16.
docs/format.md documents the layout column by column.
"""

from __future__ import annotations

import numpy as np

from streamconv.buffers import thread_buffer

__all__ = ["DEQUANTIZE_CHOICES", "block_count", "check_scales", "dequantize_into"]

#: What a reader makes of a quantized tensor: its values as float16 (default) or float32, or
#: ``None`` for the raw int8 codes.
DEQUANTIZE_CHOICES = ("float16", "float32", None)
_SIGN, _EXPONENT = 0x8000, 0x7C00


def block_count(cols: int, block: int) -> int:
    """Scales per row."""
    return -(-cols // block)


def check_scales(codes: np.ndarray, scales: np.ndarray, cols: int, block: int) -> str | None:
    """Why ``scales`` (float16, row by row) cannot be the scales of ``codes`` (int8), or ``None``.

    The writer's rule makes every scale finite and not negative, never a code of -128, a zero
    scale only for a block of zero codes, and a block of zero codes only with a zero scale (its
    largest value maps to a code of at least 63).
    """
    bits = scales.view(np.uint16)
    if bits.size and (np.bitwise_and(bits, _SIGN).any() or (np.bitwise_and(bits, _EXPONENT) == _EXPONENT).any()):
        return "a scale is negative or not finite"
    if codes.size and int(codes.min()) == -128:
        return "a code is -128, outside the codes' range -127..127"
    rows = codes.size // cols
    if cols % block == 0 and block % 8 == 0:  # a block's codes as 64-bit words: OR them, one pass
        words = codes.view(np.uint64).reshape(-1, block // 8)
        any_code = words[:, 0].copy()
        for j in range(1, block // 8):
            np.bitwise_or(any_code, words[:, j], out=any_code)
        nonzero = any_code != 0
    else:
        nonzero = np.zeros((rows, block_count(cols, block)), bool)
        for j, start in enumerate(range(0, cols, block)):
            part = codes.reshape(rows, cols)[:, start:start + block]
            nonzero[:, j] = (part != 0).any(axis=1)
        nonzero = nonzero.reshape(-1)
    if not np.array_equal(nonzero, bits != 0):
        return "a block's scale is zero while its codes are not, or the reverse"
    return None


def dequantize_into(codes: np.ndarray, scales: np.ndarray, cols: int, block: int, out: np.ndarray) -> None:
    """``out[i] = code[i] * scale`` of its block, for whole rows; ``out`` float16 or float32, 1-D."""
    rows = codes.size // cols
    wide = scales.astype(np.float32).reshape(rows, -1)
    target = out if out.dtype == np.float32 else \
        thread_buffer("dequantize", 4 * out.size)[: 4 * out.size].view(np.float32)
    if cols % block == 0:
        np.multiply(codes.reshape(rows, -1, block), wide[:, :, None], out=target.reshape(rows, -1, block))
    else:
        grid, values = codes.reshape(rows, cols), target.reshape(rows, cols)
        for j, start in enumerate(range(0, cols, block)):
            np.multiply(grid[:, start:start + block], wide[:, j:j + 1], out=values[:, start:start + block])
    if target is out:
        return
    # Exact in float32; rounded once to float16 here. numpy's float32 -> float16 cast is done one
    # element at a time in software; when every nonzero product is a normal float16 (scales from
    # 2**-14 to 512) the rounding is done on the bits instead, 1.7x faster, to the same bits.
    nonzero = wide[wide != 0]
    if nonzero.size and (nonzero.min() < _NORMAL_MIN or nonzero.max() > _SAFE_MAX):
        out[...] = target
        return
    _round_to_float16(target, codes, out)


_NORMAL_MIN, _SAFE_MAX = np.float32(2.0**-14), np.float32(512.0)


def _round_to_float16(values: np.ndarray, codes: np.ndarray, out: np.ndarray) -> None:
    """float16 bits of float32 ``values`` that are 0 (where ``codes`` is) or normal float16 after
    rounding: the float32 bits rounded to nearest even at bit 13, rebiased from 127 to 15."""
    n = values.size
    bits = values.view(np.uint32)
    scratch = thread_buffer("float16-bits", 8 * n)[: 8 * n].view(np.uint32)
    magnitude, carry = scratch[:n], scratch[n:]
    np.bitwise_and(bits, 0x7FFFFFFF, out=magnitude)
    np.right_shift(magnitude, 13, out=carry)
    np.bitwise_and(carry, 1, out=carry)
    np.add(carry, 0xFFF, out=carry)  # half a unit in the last place, less one where that is even
    np.add(magnitude, carry, out=magnitude)
    np.right_shift(magnitude, 13, out=magnitude)
    np.subtract(magnitude, (127 - 15) << 10, out=magnitude)
    np.multiply(magnitude, codes != 0, out=magnitude)  # a code of 0 is +0.0
    np.right_shift(bits, 16, out=carry)
    np.bitwise_and(carry, 0x8000, out=carry)
    np.bitwise_or(magnitude, carry, out=magnitude)
    np.copyto(out.view(np.uint16), magnitude, casting="unsafe")
