"""The nibble-split coder (format version 5, coder 3): its layout, round trips with the compiled
split/join and with the numpy fallback (the same bits), which planes get it, and damaged bodies."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import zstandard

from streamconv.format import codec, nibbles
from streamconv.format.frames import TUNED_PARAMETERS
from tests.conftest import choose_kernel

SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 1001, 65_537]


@pytest.fixture(params=["compiled", "numpy"])
def nibble_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the compiled split/join (streamconv/format/_dequant.c) and with numpy."""
    return choose_kernel(request, monkeypatch, nibbles, "compiled module (streamconv/format/_dequant.c)")


def codes(n: int, seed: int = 0) -> np.ndarray:
    """int8 codes as the writer makes them: a block's largest value at +-127, the rest near normal."""
    values = np.random.default_rng(seed).standard_normal(n) * 40
    return np.clip(np.rint(values), -127, 127).astype(np.int8)


def definition(plane: np.ndarray) -> tuple[bytes, bytes]:
    """The documented pairing, written out: high and low nibbles of b[2i], b[2i+1] (b[n] = 0)."""
    b = [int(x) for x in plane.view(np.uint8)] + [0] * (plane.size % 2)
    high = bytes((b[2 * i] & 0xF0) | (b[2 * i + 1] >> 4) for i in range(len(b) // 2))
    low = bytes(((b[2 * i] & 0x0F) << 4) | (b[2 * i + 1] & 0x0F) for i in range(len(b) // 2))
    return high, low


def body_of(high: bytes, low: bytes) -> bytes:
    """A nibble-split body from its halves: high_length, the high nibbles' frame, the low ones stored."""
    frame = zstandard.ZstdCompressor(compression_params=TUNED_PARAMETERS).compress(high)
    return len(frame).to_bytes(8, "little") + frame + low


def payload_of(body: bytes) -> bytes:
    """A one-plane payload holding ``body`` as coder 3."""
    return bytes([3]) + len(body).to_bytes(8, "little") + body


@pytest.mark.parametrize("n", SIZES)
def test_split_and_join_follow_the_definition(nibble_kernel: str, n: int) -> None:
    plane = codes(n, seed=n).view(np.uint8)
    m = -(-n // 2)
    room = np.zeros(2 * m + 2, np.uint8)
    high, low = room[1 : m + 1], room[m + 2 :]  # unaligned, as the stored low nibbles in a payload are
    nibbles.split_nibbles(plane, high, low)
    assert (high.tobytes(), low.tobytes()) == definition(plane)
    out = np.full(n + 2, 0xAA, np.uint8)
    nibbles.join_nibbles(high, low, out[1:-1])
    assert out[1:-1].tobytes() == plane.tobytes() and out[0] == out[-1] == 0xAA


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1001])
def test_small_bodies_round_trip(nibble_kernel: str, n: int) -> None:
    """Even, odd, 1-byte and empty planes (the writer codes none this small so: built by hand)."""
    plane = codes(n, seed=n)
    payload = payload_of(body_of(*definition(plane)))
    assert codec.decode(payload, np.int8, n, "zstd", 5).tobytes() == plane.tobytes()
    room = np.zeros(n + 1, np.uint8)
    target = np.zeros(n + 64, np.uint8)  # room for a frame larger than the plane
    size = nibbles.encode_body(zstandard.ZstdCompressor(compression_params=TUNED_PARAMETERS), plane.view(np.uint8),
                               target)
    assert target[:size].tobytes() == body_of(*definition(plane))
    codec.decode_into(payload, room[1:], "zstd", 5)
    assert room[1:].tobytes() == plane.tobytes()


@pytest.mark.parametrize("n", [300_000, 300_001])
def test_codes_are_nibble_split_and_round_trip(nibble_kernel: str, n: int) -> None:
    data = codes(n)
    payload = codec.encode(data, "zstd", nibbles=True).tobytes()
    assert payload[0] == 3 and int.from_bytes(payload[1:9], "little") == len(payload) - 9
    high, low = definition(data)
    assert payload[-len(low):] == low  # the low nibbles, stored as they are, end the body
    frame = payload[17 : len(payload) - len(low)]
    assert int.from_bytes(payload[9:17], "little") == len(frame)
    assert zstandard.ZstdDecompressor().decompress(frame) == high
    plain = codec.encode(data, "zstd").tobytes()
    assert plain[0] == 1 and len(payload) < 1.01 * len(plain)  # what a few more bytes buy: half the Huffman decoding
    out = np.full(n + 2, 7, np.int8)
    codec.decode_into(payload, out[1:-1], "zstd", 5)
    assert out[1:-1].tobytes() == data.tobytes() and out[0] == out[-1] == 7
    assert codec.decode(payload, np.int8, n, "zstd", 5).tobytes() == data.tobytes()


def test_which_planes_are_nibble_split() -> None:
    data = codes(100_000)
    assert codec.encode(data, "zstd", 3, nibbles=True)[0] == 1  # an explicit level: zstd, as before
    assert codec.encode(data[:8191], "zstd", nibbles=True)[0] == 1  # smaller than the sample
    skewed = (data & np.int8(~8)).astype(np.int8)  # low nibbles 0 to 7 only: 3 bits of entropy
    assert codec.encode(skewed, "zstd", nibbles=True)[0] == 1
    random = np.random.default_rng(1).integers(0, 256, 100_000).astype(np.uint8)
    assert codec.encode(random, "zstd", nibbles=True)[0] == 0  # near-random bytes are stored


def test_a_version_4_reader_refuses_coder_3() -> None:
    payload = codec.encode(codes(100_000), "zstd", nibbles=True)
    assert payload[0] == 3
    for version in (2, 3, 4):
        with pytest.raises(ValueError, match="unknown coder 3"):
            codec.decode(payload, np.int8, 100_000, "zstd", version)


def damaged_bodies(n: int) -> dict[str, bytes]:
    """Bodies of a plane of ``n`` bytes (odd), each damaged one way; every length in the payload holds."""
    high, low = definition(codes(n))
    frame = body_of(high, low)[8 : -len(low)]
    size = len(frame).to_bytes(8, "little")
    return {
        "header cut": size[:7],
        "frame past the end": (len(frame) + len(low) + 1).to_bytes(8, "little") + frame + low,
        "frame too short": (len(frame) - 1).to_bytes(8, "little") + frame + low,
        "frame too long": (len(frame) + 1).to_bytes(8, "little") + frame + low,
        "low nibbles short": size + frame + low[:-1],
        "low nibbles long": size + frame + low + b"\0",
        "frame of the wrong size": body_of(high + b"\0", low)[:-len(low)] + low,
        "low padding nibble": size + frame + low[:-1] + bytes([low[-1] | 1]),
        "high padding nibble": body_of(high[:-1] + bytes([high[-1] | 1]), low),
        "frame magic": size + b"\0\0\0\0" + frame[4:] + low,
    }


@pytest.mark.parametrize("damage", list(damaged_bodies(3)))
def test_damaged_bodies_raise_value_error_with_a_reason(nibble_kernel: str, damage: str) -> None:
    for n in (3, 20_001):
        bad = payload_of(damaged_bodies(n)[damage])
        with pytest.raises(ValueError) as info:
            codec.decode(bad, np.int8, n, "zstd", 5)
        assert "nibble" in str(info.value) or "zstd frame" in str(info.value), damage


def test_without_the_compiled_module_numpy_splits_and_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension is optional (setup.py): where it was not built, numpy does the same."""
    import streamconv.format as package

    monkeypatch.setattr(nibbles, "_KERNEL", nibbles._UNLOADED)
    monkeypatch.delattr(package, "_dequant", raising=False)
    monkeypatch.setitem(sys.modules, "streamconv.format._dequant", None)
    data = codes(50_001)
    payload = codec.encode(data, "zstd", nibbles=True)
    assert payload[0] == 3 and nibbles._KERNEL is None
    assert codec.decode(payload, np.int8, data.size, "zstd", 5).tobytes() == data.tobytes()


def test_the_compiled_module_is_used_where_it_was_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nibbles, "_KERNEL", nibbles._UNLOADED)
    kernel: Any = nibbles._kernel()
    try:
        from streamconv.format import _dequant
    except ImportError:
        assert kernel is None
    else:
        assert kernel is _dequant


def test_a_plane_of_a_wider_dtype_may_be_nibble_split(nibble_kernel: str) -> None:
    """The writer nibble-splits int8 codes only, but the layout is any plane's: a reader decodes it."""
    from streamconv.format.planes import split_planes

    data = (np.random.default_rng(2).standard_normal(5001) * 0.02).astype(np.float16)
    low_plane, high_plane = split_planes(data).reshape(2, -1)
    body = body_of(*definition(high_plane))
    payload = bytes([0, 3]) + np.array([low_plane.size, len(body)], "<u8").tobytes() + low_plane.tobytes() + body
    assert codec.decode(payload, np.float16, data.size, "zstd", 5).tobytes() == data.tobytes()
