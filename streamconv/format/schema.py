"""The contract of an output, in one place: format version, file names, the Parquet schema and the
chunk checksum (docs/format.md documents every column and key).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

__all__ = ["EXPORT_FORMAT", "EXPORT_MARKER_FILENAME", "FORMAT_VERSION", "INDEX_FILENAME", "INT8_VERSION",
           "METADATA_FILENAME", "META_COLUMNS", "MIN_ROW_BYTES", "MIN_ROW_BYTES_V1", "QUANT_COLUMNS", "QUANT_SCHEMA",
           "SCHEMA", "WEIGHTS_FILENAME", "checksum", "chunks_digest", "schema_for", "split_name", "version_for"]

#: Newest version of the output layout (see docs/format.md). Readers accept every version up to
#: this one.
FORMAT_VERSION = 5
#: The version of outputs holding int8 tensors (``--dtype int8``; 5: their codes nibble-split, coder 3).
#: Every other output is written as version 3, which it is exactly, so older readers still read it.
INT8_VERSION = 5
PLAIN_VERSION = 3
WEIGHTS_FILENAME = "weights.parquet"
METADATA_FILENAME = "metadata.json"
#: A split output's index, beside its ``weights-0000k-of-0000N.parquet`` files.
INDEX_FILENAME = "weights.parquet.index.json"
#: What ``export`` writes into every checkpoint it makes (``format`` is :data:`EXPORT_FORMAT`, then
#: the files written), so that a later ``export --force`` knows the folder as its own.
EXPORT_MARKER_FILENAME = "streamconv_export.json"
EXPORT_FORMAT = "streamconv-export"

SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("source_dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("chunk_count", pa.int32(), nullable=False),
        pa.field("element_offset", pa.int64(), nullable=False),
        pa.field("element_count", pa.int64(), nullable=False),
        pa.field("data", pa.large_binary(), nullable=False),
        # Format 2: the stored bytes' length (read without touching ``data``) and their checksum.
        pa.field("data_bytes", pa.int64(), nullable=False),
        pa.field("data_xxh3", pa.uint64(), nullable=False),
    ]
)
#: Version 4, int8 outputs only: a chunk's quantization block (0: not quantized; else the block
#: length along the last axis), its float16 scales coded as ``data`` is, and their checksum.
QUANT_COLUMNS = ["block", "scales", "scales_bytes", "scales_xxh3"]
QUANT_SCHEMA = pa.schema(
    [
        *SCHEMA,
        pa.field("block", pa.int32(), nullable=False),
        pa.field("scales", pa.large_binary(), nullable=False),
        pa.field("scales_bytes", pa.int64(), nullable=False),
        pa.field("scales_xxh3", pa.uint64(), nullable=False),
    ]
)
#: Every column but the data and its checksum: what describes a chunk.
META_COLUMNS = ["name", "source_name", "dtype", "source_dtype", "shape", "chunk_index", "chunk_count",
                "element_offset", "element_count"]


#: Fewest bytes a row takes in a weights file (format 2 and later): four 8-byte and two 4-byte plain
#: columns and the data value's 4-byte length; the smallest measured, a 1-byte chunk stored as it is,
#: takes 54. A file declaring more rows than its size holds at this rate is refused before it is read.
MIN_ROW_BYTES = 32
#: The same for format 1, whose small columns were zstd-compressed: the data value's length alone.
MIN_ROW_BYTES_V1 = 4


def split_name(index: int, count: int) -> str:
    """``weights-00001-of-00003.parquet``."""
    return f"weights-{index:05d}-of-{count:05d}.parquet"


def checksum(payload: bytes | memoryview | np.ndarray) -> int:
    """The ``data_xxh3`` of a stored ``data`` value: xxHash's XXH3-64 of its bytes, seed 0."""
    return xxhash.xxh3_64_intdigest(payload.data if isinstance(payload, np.ndarray) else payload)


def version_for(quantized: bool) -> int:
    """The format version an output is written in: :data:`INT8_VERSION` if it holds int8 tensors."""
    return INT8_VERSION if quantized else PLAIN_VERSION


def schema_for(quantized: bool) -> pa.Schema:
    """The Parquet schema of an output with or without int8 tensors."""
    return QUANT_SCHEMA if quantized else SCHEMA


def chunks_digest(sums: np.ndarray, scale_sums: np.ndarray | None = None) -> int:
    """A file's identity from its rows' ``data_xxh3`` values, in order: XXH3-64 of them as little-endian
    uint64s (a split index records it per file as ``chunks_xxh3``). A file with int8 columns (version 4 on)
    gives each row's ``data_xxh3`` then its ``scales_xxh3``: codes alone do not tell two outputs apart."""
    if scale_sums is not None:
        sums = np.column_stack([sums, scale_sums]).ravel()
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(sums, "<u8").tobytes())
