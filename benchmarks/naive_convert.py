"""The conversion people write today, as the baseline streamconv is measured against.

Loads the whole model with transformers (the class named in the checkpoint's
``config.json`` ``architectures``), takes its ``state_dict()``, casts each
tensor to float16, builds one pyarrow table (name, shape, dtype, data = the
fp16 bytes) and writes it with ``pq.write_table(..., compression="zstd")``.

``--keep PREFIX`` (repeatable) keeps only tensors whose names start with one of
the prefixes, so the output holds what streamconv's model plan keeps.

``--low-cpu-mem-usage`` passes ``low_cpu_mem_usage=True`` to ``from_pretrained``, the switch
people reach for when the naive path runs out of memory (transformers 5 accepts and ignores it:
its loading is always the low-memory one).

Usage: python benchmarks/naive_convert.py SOURCE_DIR OUTPUT.parquet [--keep PREFIX ...] [--low-cpu-mem-usage]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import transformers


def convert(source: Path, output: Path, keep: tuple[str, ...], low_cpu_mem_usage: bool = False) -> None:
    """Convert the checkpoint in ``source`` to a zstd Parquet file at ``output``."""
    architecture = json.loads((source / "config.json").read_text())["architectures"][0]
    kwargs = {"low_cpu_mem_usage": True} if low_cpu_mem_usage else {}
    model = getattr(transformers, architecture).from_pretrained(source, **kwargs)
    names, shapes, dtypes, data = [], [], [], []
    for name, tensor in model.state_dict().items():
        if keep and not name.startswith(keep):
            continue
        half = tensor.half().contiguous()
        names.append(name)
        shapes.append(list(half.shape))
        dtypes.append("float16")
        data.append(half.numpy().tobytes())
    table = pa.table(
        {
            "name": pa.array(names, pa.string()),
            "shape": pa.array(shapes, pa.list_(pa.int64())),
            "dtype": pa.array(dtypes, pa.string()),
            "data": pa.array(data, pa.binary()),
        }
    )
    pq.write_table(table, output, compression="zstd")


def main() -> None:
    """Parse the command line and convert."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--keep", action="append", default=[], help="keep only tensors with this name prefix")
    parser.add_argument("--low-cpu-mem-usage", action="store_true", help="from_pretrained(low_cpu_mem_usage=True)")
    args = parser.parse_args()
    convert(args.source, args.output, tuple(args.keep), args.low_cpu_mem_usage)


if __name__ == "__main__":
    main()
