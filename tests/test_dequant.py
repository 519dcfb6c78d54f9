"""Reading int8 chunks: the compiled kernel (streamconv/format/_dequant.c) against the numpy path,
bit for bit, and the same problems found in damaged codes and scales by both."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from streamconv.format import quantized
from streamconv.format.quantized import block_count, decode_values

#: (cols, block): whole 64-blocks, a shorter last block, blocks shorter than a vector, odd sizes.
SHAPES = [(1024, 64), (200, 64), (65, 64), (63, 64), (100, 8), (7, 3), (130, 32), (1, 64)]


@pytest.fixture
def kernel() -> Any:
    loaded = quantized._kernel()
    if loaded is None:
        pytest.skip("the optional int8 read kernel (streamconv/format/_dequant.c) is not built here, or this "
                    "CPU has no AVX2 and F16C: the numpy path is the only one")
    return loaded


def _both(monkeypatch: pytest.MonkeyPatch, kernel: Any, codes: np.ndarray, scales: np.ndarray, cols: int, block: int,
          out: np.ndarray) -> tuple[tuple[str | None, bytes], tuple[str | None, bytes]]:
    """``decode_values`` with the kernel and with numpy: each one's problem and output bytes."""
    got = []
    for chosen in (kernel, None):
        monkeypatch.setattr(quantized, "_KERNEL", chosen)
        out[...] = 0
        target = codes if out.dtype == np.int8 else out
        got.append((decode_values(codes, scales, cols, block, target), out.tobytes()))
    return got[0], got[1]


def _random(rng: np.random.Generator, rows: int, cols: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales that follow the writer's rule: every range of scales, zero blocks among them."""
    blocks = rows * block_count(cols, block)
    scales = np.minimum(2.0 ** rng.uniform(-25, 16, blocks), 65504).astype(np.float16)  # subnormal to huge
    scales[rng.random(blocks) < 0.2] = 0
    codes = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    for k in range(blocks):  # a nonzero scale's block keeps a nonzero code; a zero scale's codes are 0
        row, start = divmod(k, block_count(cols, block))
        part = codes[row, start * block:(start + 1) * block]
        if scales[k] == 0:
            part[:] = 0
        else:
            part[0] = rng.choice([-127, 127])
    return codes.reshape(-1), scales


@pytest.mark.parametrize(("cols", "block"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_kernel_gives_the_numpy_bits(monkeypatch: pytest.MonkeyPatch, kernel: Any, cols: int, block: int,
                                     dtype: type) -> None:
    rng = np.random.default_rng(cols * 7 + block)
    codes, scales = _random(rng, 37, cols, block)
    room = np.zeros(codes.size + 1, dtype)
    for out in (room[:-1], room[1:]):  # aligned (the kernel's streaming stores) and not
        with np.errstate(over="ignore"):  # 127 times the largest scales: inf, in both
            compiled, fallback = _both(monkeypatch, kernel, codes, scales, cols, block, out)
        assert compiled == fallback and compiled[0] is None


def test_kernel_gives_the_numpy_bits_on_a_real_chunk_size(monkeypatch: pytest.MonkeyPatch, kernel: Any) -> None:
    rng = np.random.default_rng(5)
    codes, scales = _random(rng, 512, 1024, 64)
    for dtype in (np.float16, np.float32, np.int8):
        empty = _both(monkeypatch, kernel, codes[:0], scales[:0], 1024, 64, np.empty(0, dtype))
        assert empty == ((None, b""), (None, b""))
        with np.errstate(over="ignore"):
            compiled, fallback = _both(monkeypatch, kernel, codes, scales, 1024, 64, np.empty(codes.size, dtype))
        assert compiled == fallback and compiled[0] is None


@pytest.mark.parametrize("damage", ["negative", "-0", "inf", "nan", "code -128", "zero scale", "zero block"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8])
def test_kernel_finds_the_problems_numpy_finds(monkeypatch: pytest.MonkeyPatch, kernel: Any, damage: str,
                                               dtype: type) -> None:
    codes, scales = _random(np.random.default_rng(9), 8, 200, 64)
    nonzero = int(np.flatnonzero(scales)[-1])  # the last nonzero scale: found in the pass's last blocks too
    row, start = divmod(nonzero, block_count(200, 64))
    if damage == "code -128":
        codes[row * 200 + start * 64] = -128
    elif damage == "zero block":
        codes[row * 200 + start * 64:row * 200 + min(200, start * 64 + 64)] = 0
    else:
        scales[nonzero] = {"negative": -scales[nonzero], "-0": -0.0, "inf": np.inf, "nan": np.nan,
                           "zero scale": 0}[damage]
    with np.errstate(invalid="ignore", over="ignore"):
        compiled, fallback = _both(monkeypatch, kernel, codes, scales, 200, 64, np.empty(codes.size, dtype))
    assert compiled[0] is not None and compiled[0] == fallback[0]


def test_the_first_problem_is_named_as_numpy_names_it(monkeypatch: pytest.MonkeyPatch, kernel: Any) -> None:
    """Several problems at once: the kernel reports the one the numpy checks find first."""
    codes, scales = _random(np.random.default_rng(11), 4, 128, 64)
    codes[-1], scales[0] = -128, np.float16(np.inf)
    compiled, fallback = _both(monkeypatch, kernel, codes, scales, 128, 64, np.empty(codes.size, np.float16))
    assert compiled[0] == fallback[0] == "a scale is negative or not finite"
    codes[0:64] = 0  # its scale is not zero
    scales[0] = 1
    compiled, fallback = _both(monkeypatch, kernel, codes, scales, 128, 64, np.empty(codes.size, np.float16))
    assert compiled[0] == fallback[0] == "a code is -128, outside the codes' range -127..127"


def test_without_the_kernel_the_numpy_path_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension is optional (setup.py): where it was not built, the first int8 chunk finds no
    kernel and numpy decodes."""
    import streamconv.format as package

    monkeypatch.setattr(quantized, "_KERNEL", quantized._UNLOADED)
    monkeypatch.delattr(package, "_dequant", raising=False)  # else `from ... import` finds the attribute
    monkeypatch.setitem(sys.modules, "streamconv.format._dequant", None)  # as if never built
    codes = np.random.default_rng(1).integers(-127, 128, 128).astype(np.int8)
    scales = np.array([0.01, 3e-6], np.float16)  # a normal scale and a subnormal one
    out = np.empty(codes.size, np.float16)
    assert decode_values(codes, scales, 64, 64, out) is None and quantized._KERNEL is None
    values = codes.astype(np.float32) * np.repeat(scales.astype(np.float32), 64)
    assert out.tobytes() == values.astype(np.float16).tobytes()
