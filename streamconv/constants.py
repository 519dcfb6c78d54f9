"""Tables and defaults shared by the pipeline: dtypes, format version, environment variables."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

#: Version of the Parquet layout written by this package (see docs/format.md).
FORMAT_VERSION = 1
WEIGHTS_FILENAME = "weights.parquet"
METADATA_FILENAME = "metadata.json"

#: safetensors dtype code -> numpy dtype (little-endian, as safetensors stores it).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

#: Names written in the Parquet ``dtype`` column, per numpy dtype.
DTYPE_NAMES: dict[np.dtype, str] = {
    np.dtype("<f8"): "float64",
    np.dtype("<f4"): "float32",
    np.dtype("<f2"): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
    np.dtype("<i8"): "int64",
    np.dtype("<i4"): "int32",
    np.dtype("<i2"): "int16",
    np.dtype("i1"): "int8",
    np.dtype("u1"): "uint8",
    np.dtype("?"): "bool",
}
NUMPY_DTYPES: dict[str, np.dtype] = {name: dt for dt, name in DTYPE_NAMES.items()}

#: Values accepted by ``--dtype``: a float target, or ``keep`` for the source dtype.
DTYPE_CHOICES = ("float16", "bfloat16", "float32", "keep")
DEFAULT_DTYPE = "float16"

COMPRESSION_CHOICES = ("zstd", "none")
DEFAULT_COMPRESSION = "zstd"
DEFAULT_ZSTD_LEVEL = 3

#: Largest number of source bytes one chunk (one Parquet row) holds.
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024

#: Worker threads that split and compress chunks; zstd and numpy release the GIL.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

ENV_DISABLE_PROGRESS_BARS = "STREAMCONV_DISABLE_PROGRESS_BARS"


def progress_bars_disabled() -> bool:
    """True when ``STREAMCONV_DISABLE_PROGRESS_BARS`` is set to a true value."""
    value = os.environ.get(ENV_DISABLE_PROGRESS_BARS, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}
