"""One measured operation in a fresh process: the floors, in-process convert, and the readers.

Each mode times one operation after the imports and prints one JSON line on stdout:
``seconds`` (wall time of the operation), ``cpu_seconds`` (the process's CPU time over it, all
threads: steadier than wall time on a shared machine), ``bytes`` (what it moved: source bytes for the
encode side, decoded bytes for the read side), ``tensors``, ``rss_start_mib`` (resident set
after the imports) and ``peak_rss_mib`` (the process's high-water mark, ``VmHWM``).

Modes:

- ``encode-floor SRC``: read, cast to float16, byte-split and compress every 2 MiB piece of every
  tensor of the safetensors files in SRC on ``--workers`` threads, writing nothing, with the
  kernels streamconv uses: plain ``os.preadv`` into numpy, ``streamconv.stages.casting.cast_array`` (bf16
  straight to float16, as streamconv casts it) and ``streamconv.format.codec.encode`` with convert's
  default coder. The least work any converter with streamconv's format must do.
- ``convert SRC OUT``: ``streamconv.convert(SRC, OUT, dtype="float16", force=True, workers=N)``.
- ``decode-floor OUT``: read the ``data`` column of OUT's weights row group by row group with
  pyarrow and decode every chunk with ``streamconv.format.codec.decode`` on ``--workers`` threads,
  keeping nothing: the least work any reader of the format must do.
- ``iter OUT``: ``streamconv.iter_tensors`` over every tensor (each dropped once counted).
- ``load OUT``: ``streamconv.load`` (every tensor held at once).
- ``safetensors DIR``: ``safetensors.safe_open(..., "np")`` and ``get_tensor`` of every tensor of
  every ``*.safetensors`` file in DIR.
- ``cast -``: the float16 cast of one 2 MiB chunk (seeded normal values), float32 and bfloat16
  sources, with streamconv's compiled kernel, its fallback (Arrow's cast for float32, ml_dtypes'
  for bfloat16) and numpy's ``astype``, one thread: prints M elements/s per source and kernel
  (median of 9 timings of 20 casts each).

Usage: python benchmarks/probe.py MODE PATH [OUT] [--workers 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_BYTES = 2 * 1024 * 1024
IN_FLIGHT_PER_WORKER = 8
ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}  # fmt: skip
FLOATS = {"F64", "F32", "F16", "BF16"}


@functools.cache
def bfloat16() -> np.dtype:
    """numpy's bfloat16 (ml_dtypes), imported only where bfloat16 data is: as in streamconv, a float16
    read never pays its import (0.7 s, 8 MiB here), so load's and iter's figures are a user's."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def st_dtype(code: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype code."""
    return bfloat16() if code == "BF16" else ST_DTYPES[code]


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mib() -> float:
    """Current resident set size of this process."""
    return status_mib("VmRSS")


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set.

    ``VmHWM``, not ``ru_maxrss``: Linux carries the parent's high-water mark into ``ru_maxrss``
    across fork + exec, so a probe started by a large harness would report the harness's size.
    """
    return status_mib("VmHWM")


def as_pair(item: Any) -> tuple[str, np.ndarray]:
    """``(name, array)`` from what ``iter_tensors`` yields: a tuple, or a record with ``.name``/``.array``."""
    if isinstance(item, tuple):
        return item[0], item[1]
    return item.name, item.array


def as_array(value: Any) -> np.ndarray:
    """An array from a value of ``load``'s dict: an array, or a record with ``.array``."""
    return value if isinstance(value, np.ndarray) else value.array


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (a file given directly is its own list)."""
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.safetensors"))
    if not files:
        raise SystemExit(f"{folder}: no safetensors files")
    return files


def header(file: Path) -> tuple[int, dict[str, Any]]:
    """Start of the data and the tensor entries of a safetensors file."""
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        entries = json.loads(f.read(size))
    entries.pop("__metadata__", None)
    return 8 + size, entries


def pieces(folder: Path) -> Iterator[tuple[int, int, int, str]]:
    """``(fd, offset, elements, dtype code)`` of every 2 MiB piece of every tensor, in file order."""
    for file in safetensors_files(folder):
        base, entries = header(file)
        fd = os.open(file, os.O_RDONLY)
        for entry in sorted(entries.values(), key=lambda e: e["data_offsets"][0]):
            dtype = st_dtype(entry["dtype"])
            numel = math.prod(entry["shape"])
            per = max(1, CHUNK_BYTES // dtype.itemsize)
            start = base + entry["data_offsets"][0]
            for first in range(0, max(numel, 1), per):
                yield fd, start + first * dtype.itemsize, min(per, numel - first), entry["dtype"]


def encode_piece(piece: tuple[int, int, int, str]) -> int:
    """Read, cast to float16, split and compress one piece as convert does; return its source bytes."""
    from streamconv.dtypes import by_name
    from streamconv.format import codec
    from streamconv.stages.casting import cast_array

    fd, offset, count, code = piece
    dtype = st_dtype(code)
    data = np.empty(count, dtype=dtype)
    view = memoryview(data.view(np.uint8))
    filled = 0
    while filled < len(view):
        n = os.preadv(fd, [view[filled:]], offset + filled)
        if n <= 0:
            raise OSError("file ended early")
        filled += n
    if code in FLOATS and code != "F16":
        data = cast_array(data, by_name("float16"))  # type: ignore[arg-type]
    codec.encode(data, "zstd")
    return count * dtype.itemsize


def bounded_map(pool: ThreadPoolExecutor, fn: Any, items: Any, workers: int) -> Iterator[Any]:
    """``pool.map`` with at most ``IN_FLIGHT_PER_WORKER * workers`` items submitted ahead."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > IN_FLIGHT_PER_WORKER * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def encode_floor(src: Path, workers: int) -> tuple[int, int]:
    with ThreadPoolExecutor(workers) as pool:
        total = sum(bounded_map(pool, encode_piece, pieces(src), workers))
    tensors = sum(len(header(f)[1]) for f in safetensors_files(src))
    return total, tensors


def weights_file(out: Path) -> Path:
    return out / "weights.parquet" if out.is_dir() else out


def decode_floor(out: Path, workers: int) -> tuple[int, int]:
    import pyarrow.parquet as pq

    from streamconv.format import codec

    parquet = pq.ParquetFile(weights_file(out))
    compression = parquet.schema_arrow.metadata[b"streamconv.compression"].decode()
    dtypes = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"),
              "float64": np.dtype("<f8"), "int64": np.dtype("<i8"), "int32": np.dtype("<i4"),
              "int16": np.dtype("<i2"), "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "bool": np.dtype("?")}  # fmt: skip

    def chunks() -> Iterator[tuple[Any, np.dtype, int]]:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["dtype", "element_count", "data"])
            data = table.column("data").combine_chunks()
            names = table.column("dtype").to_pylist()
            counts = table.column("element_count").to_pylist()
            for i, (name, count) in enumerate(zip(names, counts, strict=True)):
                yield data[i].as_buffer(), bfloat16() if name == "bfloat16" else dtypes[name], count

    def decode(item: tuple[Any, np.dtype, int]) -> int:
        payload, dtype, count = item
        return codec.decode(payload, dtype, count, compression).nbytes

    with ThreadPoolExecutor(workers) as pool:
        total = sum(bounded_map(pool, decode, chunks(), workers))
    return total, -1


def iterate(out: Path) -> tuple[int, int]:
    import streamconv

    total = tensors = 0
    for item in streamconv.iter_tensors(out):
        _, array = as_pair(item)
        total += array.nbytes
        tensors += 1
    return total, tensors


def load(out: Path) -> tuple[int, int]:
    import streamconv

    weights = streamconv.load(out)
    return sum(as_array(v).nbytes for v in weights.values()), len(weights)


def read_safetensors(folder: Path) -> tuple[int, int]:
    from safetensors import safe_open

    total = tensors = 0
    for file in safetensors_files(folder):
        with safe_open(file, framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                total += f.get_tensor(key).nbytes
                tensors += 1
    return total, tensors


def cast_speeds() -> dict[str, float]:
    """M elements/s of each float16 cast of one 2 MiB chunk, keyed ``"<source> <kernel>"``."""
    import statistics

    from streamconv.dtypes import by_name
    from streamconv.stages import casting as stages

    float16 = by_name("float16")
    rng = np.random.default_rng(0)
    sources = {"float32": (rng.standard_normal(CHUNK_BYTES // 4) * 0.02).astype(np.float32),
               "bfloat16": (rng.standard_normal(CHUNK_BYTES // 2) * 0.02).astype(bfloat16())}
    compiled, speeds = stages._HALFCAST, {}
    try:
        for source, data in sources.items():
            for kernel in ("compiled", "fallback", "numpy"):
                if kernel == "compiled" and compiled is None:
                    speeds[f"{source} {kernel}"] = float("nan")
                    continue
                stages._HALFCAST = compiled if kernel == "compiled" else None
                def cast(data: np.ndarray = data, kernel: str = kernel) -> Any:
                    return data.astype(np.float16) if kernel == "numpy" else stages.cast_array(data, float16)
                timings = []
                for _ in range(9):
                    start = time.perf_counter()
                    for _ in range(20):
                        cast()
                    timings.append((time.perf_counter() - start) / 20)
                speeds[f"{source} {kernel}"] = data.size / statistics.median(timings) / 1e6
    finally:
        stages._HALFCAST = compiled
    return speeds


def convert(src: Path, out: Path, workers: int, model_type: str) -> tuple[int, int]:
    import streamconv

    options = {"model_type": model_type} if model_type != "auto" else {}
    result = streamconv.convert(src, out, dtype="float16", force=True, workers=workers, **options)
    return result.source_bytes, result.tensor_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["encode-floor", "convert", "decode-floor", "iter", "load", "safetensors",
                                         "cast"])
    parser.add_argument("path", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--type", default="auto", help="convert: streamconv model type")
    parser.add_argument("--repeat", type=int, default=1, help="do the operation this many times (for profiling)")
    args = parser.parse_args()
    # Import what every mode needs before the clock starts.
    import pyarrow.parquet  # noqa: F401
    import zstandard  # noqa: F401

    import streamconv  # noqa: F401

    if args.mode == "safetensors":
        import safetensors  # noqa: F401
    if args.mode == "cast":
        print(json.dumps({"mode": "cast", "melements_per_s": cast_speeds()}))
        return
    operations = {
        "encode-floor": lambda: encode_floor(args.path, args.workers),
        "convert": lambda: convert(args.path, args.out, args.workers, args.type),
        "decode-floor": lambda: decode_floor(args.path, args.workers),
        "iter": lambda: iterate(args.path),
        "load": lambda: load(args.path),
        "safetensors": lambda: read_safetensors(args.path),
    }
    rss_start = rss_now_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.repeat):
        nbytes, tensors = operations[args.mode]()
    seconds = (time.perf_counter() - start) / args.repeat
    cpu_seconds = (time.process_time() - cpu_start) / args.repeat
    print(json.dumps({"mode": args.mode, "seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": nbytes,
                      "tensors": tensors,
                      "rss_start_mib": rss_start, "peak_rss_mib": peak_rss_mib()}))  # fmt: skip


if __name__ == "__main__":
    main()
