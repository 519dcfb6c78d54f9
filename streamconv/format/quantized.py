"""Reading int8 chunks (format version 4 on): their scales checked against their codes, then dequantized.

A quantized chunk holds whole rows of a 2-D tensor of ``cols`` columns: ``data`` is the rows' int8
codes, ``scales`` one float16 scale per block of ``block`` consecutive elements of a row (the last
block of a row is shorter when ``block`` does not divide ``cols``), row after row. An element is
``code * scale``: exact in float32 (8 bits times 11), rounded once to nearest even for float16.
docs/format.md documents the layout column by column.

:func:`decode_values` checks and dequantizes with the compiled kernel (``_dequant.c``, loaded at the
first int8 chunk: reading other outputs loads no compiled code) where it was built and the CPU has
AVX2 and F16C; otherwise with :func:`check_scales` and :func:`dequantize_into`, to the same bits.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from streamconv.buffers import thread_buffer
from streamconv.format.nibbles import compiled_module

__all__ = ["DEQUANTIZE_CHOICES", "block_count", "check_scales", "decode_values", "dequantize_into", "rows_problem"]

#: What a reader makes of a quantized tensor: its values as float16 (default) or float32, or
#: ``None`` for the raw int8 codes.
DEQUANTIZE_CHOICES = ("float16", "float32", None)
_SIGN, _EXPONENT = 0x8000, 0x7C00


def block_count(cols: int, block: int) -> int:
    """Scales per row."""
    return -(-cols // block)


def rows_problem(dtype: str, shape: tuple[int, ...], block: int, first: int, blocks: np.ndarray,
                 offsets: np.ndarray, counts: np.ndarray, scale_bytes: np.ndarray) -> str | None:
    """Why a tensor's rows (chunks ``first``... of a file of version 4 on, as columns) cannot be its chunks,
    ``block`` being its chunk 0's block, or ``None``: every chunk has that block; an int8 chunk holds
    whole rows of a 2-D int8 tensor and has scales. Checked before anything is allocated."""
    if first == 0 and (block < 0 or (block and (dtype != "int8" or len(shape) != 2 or shape[1] < 1))):
        return f"block {block} for a {dtype} tensor of shape {list(shape)[:8]}; only 2-D int8 tensors are quantized"
    other = np.flatnonzero(blocks != block)
    if len(other):
        return f"chunk {first + int(other[0])} has block {blocks[other[0]]}, chunk 0 {block}"
    if not block:
        return None
    partial = np.flatnonzero((offsets % shape[1] != 0) | (counts % shape[1] != 0))
    if len(partial):
        return f"int8 chunk {first + int(partial[0])} does not hold whole rows"
    bare = np.flatnonzero((counts > 0) & (scale_bytes == 0))
    if len(bare):
        return f"int8 chunk {first + int(bare[0])} has no scales (damaged); convert it again"
    return None


_BAD_SCALE = "a scale is negative or not finite"
_BAD_CODE = "a code is -128, outside the codes' range -127..127"
_BAD_ZERO = "a block's scale is zero while its codes are not, or the reverse"
#: The kernel's problem bits, in the order :func:`check_scales` looks for them.
_PROBLEMS = ((1, _BAD_SCALE), (2, _BAD_CODE), (4, _BAD_ZERO))
_UNLOADED = object()
_KERNEL: Any = _UNLOADED


def _kernel() -> ModuleType | None:
    """The compiled module, or ``None`` where it is not built or the CPU lacks the instructions;
    imported at the first call."""
    global _KERNEL
    if _KERNEL is _UNLOADED:
        module = compiled_module()
        _KERNEL = module if module is not None and module.supported() else None
    return _KERNEL


def decode_values(codes: np.ndarray, scales: np.ndarray, cols: int, block: int, out: np.ndarray) -> str | None:
    """Check ``scales`` against ``codes`` (:func:`check_scales`) and, for a float16 or float32 ``out``
    (1-D), dequantize into it; an int8 ``out`` is ``codes`` itself. Returns the problem, or ``None``;
    ``out`` is unspecified after a problem."""
    kernel, raw = _kernel(), out.dtype == np.int8
    if kernel is None:
        problem = check_scales(codes, scales, cols, block)
        if problem is None and not raw:
            dequantize_into(codes, scales, cols, block, out)
        return problem
    bits = kernel.dequantize(codes, scales.view(np.uint16), cols, block, out, 0 if raw else out.itemsize)
    return next((text for bit, text in _PROBLEMS if bits & bit), None)


def check_scales(codes: np.ndarray, scales: np.ndarray, cols: int, block: int) -> str | None:
    """Why ``scales`` (float16, row by row) cannot be the scales of ``codes`` (int8), or ``None``.

    The writer's rule makes every scale finite and not negative, never a code of -128, a zero
    scale only for a block of zero codes, and a block of zero codes only with a zero scale (its
    largest value maps to a code of at least 63).
    """
    bits = scales.view(np.uint16)
    if bits.size and (np.bitwise_and(bits, _SIGN).any() or (np.bitwise_and(bits, _EXPONENT) == _EXPONENT).any()):
        return _BAD_SCALE
    if codes.size and int(codes.min()) == -128:
        return _BAD_CODE
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
        return _BAD_ZERO
    return None


def dequantize_into(codes: np.ndarray, scales: np.ndarray, cols: int, block: int, out: np.ndarray) -> None:
    """``out[i] = code[i] * scale`` of its block, for whole rows; ``out`` float16 or float32, 1-D.

    The product is exact in float32, rounded once for float16. numpy's float32 -> float16 cast is
    done one element at a time in software; when every nonzero scale is a normal float16 up to 512
    (every nonzero value then a normal float16) the rounding is done on the bits instead
    (:func:`_round_to_float16`), to the same bits.
    """
    rows = codes.size // cols
    if not rows:
        return
    wide = scales.astype(np.float32).reshape(rows, -1)
    target = out if out.dtype == np.float32 else \
        thread_buffer("dequantize", 4 * out.size)[: 4 * out.size].view(np.float32)
    if target is not out and cols % block == 0:
        nonzero = wide[wide != 0]
        if not nonzero.size or (nonzero.min() >= _NORMAL_MIN and nonzero.max() <= _SAFE_MAX):
            _round_to_float16(codes, wide, block, target, out)
            return
    if cols % block == 0:
        np.multiply(codes.reshape(rows, -1, block), wide[:, :, None], out=target.reshape(rows, -1, block))
    else:
        grid, values = codes.reshape(rows, cols), target.reshape(rows, cols)
        for j, start in enumerate(range(0, cols, block)):
            np.multiply(grid[:, start:start + block], wide[:, j:j + 1], out=values[:, start:start + block])
    if target is not out:
        out[...] = target


_NORMAL_MIN, _SAFE_MAX = np.float32(2.0**-14), np.float32(512.0)
#: 2**-112 takes a float32 exponent bias (127) to float16's (15): exact for every normal float16 value.
_REBIAS = np.float32(2.0**-112)


def _round_to_float16(codes: np.ndarray, wide: np.ndarray, block: int, scratch: np.ndarray, out: np.ndarray) -> None:
    """float16 bits of ``code * scale`` (``cols`` a multiple of ``block``; the scales' range checked).

    The products times 2**-112 are exact float32 values whose exponent field is float16's; their
    bits rounded to nearest even at bit 13 (add 0xFFF, plus 1 when bit 13 is set), shifted right
    by 13, are the float16 magnitude; the sign is the code's. A code of 0 gives +0.0.
    """
    n = codes.size
    rows = wide.shape[0]
    np.multiply(codes.reshape(rows, -1, block), (wide * _REBIAS)[:, :, None], out=scratch.reshape(rows, -1, block))
    bits = scratch.view(np.uint32)
    carry = thread_buffer("float16-bits", 4 * n)[: 4 * n].view(np.uint32)
    np.right_shift(bits, 13, out=carry)
    np.bitwise_and(carry, 1, out=carry)
    np.add(carry, 0xFFF, out=carry)
    np.add(carry, bits, out=carry)
    np.right_shift(carry, 13, out=carry)
    half = out.view(np.uint16)
    np.copyto(half, carry, casting="unsafe")  # the low 16 bits: the magnitude, bit 15 clear
    sign = thread_buffer("float16-sign", n)[:n]
    np.bitwise_and(codes.view(np.uint8), 0x80, out=sign)
    np.bitwise_or(half, np.left_shift(sign, 8, dtype=np.uint16), out=half)
