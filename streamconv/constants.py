"""Defaults and names shared by the pipeline: format version, file names, environment variables.

The dtype facts live in :mod:`streamconv.dtypes`.
"""

from __future__ import annotations

import os

#: Version of the output layout written by this package (see docs/format.md). Readers accept
#: every version up to this one.
FORMAT_VERSION = 2
WEIGHTS_FILENAME = "weights.parquet"
METADATA_FILENAME = "metadata.json"

#: Values accepted by ``dtype``: a float target, or ``keep`` for the source dtype.
DTYPE_CHOICES = ("float16", "bfloat16", "float32", "keep")
DEFAULT_DTYPE = "float16"

COMPRESSION_CHOICES = ("zstd", "none")
DEFAULT_COMPRESSION = "zstd"
ZSTD_LEVELS = range(-7, 23)

#: Largest number of source bytes one chunk (one Parquet row) holds.
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024

#: Worker threads that read, cast and compress chunks; zstd and numpy release the GIL.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

ENV_DISABLE_PROGRESS_BARS = "STREAMCONV_DISABLE_PROGRESS_BARS"


def progress_bars_disabled() -> bool:
    """True when ``STREAMCONV_DISABLE_PROGRESS_BARS`` is set to a true value."""
    value = os.environ.get(ENV_DISABLE_PROGRESS_BARS, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}
