"""streamconv: stream Hugging Face safetensors checkpoints into compressed Parquet weights.

Three ways in:

- ``streamconv convert MODEL -o OUT`` on the command line;
- :func:`convert` (or :class:`ModelConverter`) from Python, with :class:`ConvertOptions` or its
  fields, returning a :class:`ConversionResult`;
- the generator stages :func:`select`, :func:`rename`, :func:`chunk`, :func:`cast` over
  :func:`open_checkpoint`, written with :class:`WeightsWriter`.

Check an output against its source with :func:`validate` (imports torch and transformers when
called, not when ``streamconv`` is imported), returning a :class:`ValidationReport`; check an
output on its own (every chunk's checksum, every file's sha256) with :func:`verify`.

Read the result back with :func:`load`, :func:`iter_tensors` (records with names, dtypes and
arrays), :func:`load_tensor` or :func:`describe`; write it back as a Hugging Face checkpoint with
:func:`export`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from streamconv._version import __version__

# Arrow's memory pool, chosen by measurement (docs/reliability.md, "Memory"): jemalloc where
# pyarrow's wheels carry it (x86-64 Linux). With the system allocator, Parquet's page buffers
# fragment glibc's main heap between the writer's long-lived metadata: an 8.6 GB conversion peaked
# at 180 MiB with 73 MiB of it free inside malloc's arenas, against 143 MiB with jemalloc, at the
# same speed; it also converts under a lower RLIMIT_DATA (184 MiB against 192). mimalloc, Arrow's
# default elsewhere, reserves address space RLIMIT_DATA counts (it fails at 256 MiB). Set before
# pyarrow is imported, only if the user chose nothing.
if "pyarrow" not in sys.modules:
    _JEMALLOC = sys.platform == "linux" and os.uname().machine == "x86_64"
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc" if _JEMALLOC else "system")
    # jemalloc's background purging threads: under a memory limit one it cannot start prints a line
    # of its own ("<jemalloc>: background thread creation failed") beside streamconv's one-line error.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")

# The names below are imported on first use, not with the package, so `streamconv` on the command
# line starts without numpy and pyarrow and a Ctrl-C during their import is caught by the CLI
# (one line, exit 130) instead of printing a traceback from here.
_LAZY = {
    "ConversionResult": "streamconv.pipeline.result",
    "ConvertOptions": "streamconv.pipeline.options",
    "ModelConverter": "streamconv.pipeline.convert",
    "convert": "streamconv.pipeline.convert",
    "export": "streamconv.tools.export",
    "ExportResult": "streamconv.tools.export",
    "StreamconvError": "streamconv.errors",
    "validate": "streamconv.tools.validate",
    "ValidationReport": "streamconv.tools.validate",
    "TensorInfo": "streamconv.format.records",
    "TensorRecord": "streamconv.format.records",
    "describe": "streamconv.format.reader",
    "iter_tensors": "streamconv.format.reader",
    "load": "streamconv.format.reader",
    "load_tensor": "streamconv.format.reader",
    "read_metadata": "streamconv.format.reader",
    "Checkpoint": "streamconv.sources.checkpoint",
    "TensorRef": "streamconv.sources.ref",
    "open_checkpoint": "streamconv.sources.checkpoint",
    "read_safetensors_header": "streamconv.sources.checkpoint",
    "TensorChunk": "streamconv.stages.pieces",
    "cast": "streamconv.stages.pieces",
    "chunk": "streamconv.stages.pieces",
    "rename": "streamconv.stages.names",
    "select": "streamconv.stages.names",
    "WeightsWriter": "streamconv.format.writer",
    "verify": "streamconv.tools.verify",
    "VerifyReport": "streamconv.tools.verify",
}

if TYPE_CHECKING:
    from streamconv.errors import StreamconvError
    from streamconv.format.reader import TensorInfo, TensorRecord, describe, iter_tensors, load, load_tensor, read_metadata
    from streamconv.format.writer import WeightsWriter
    from streamconv.pipeline.convert import ModelConverter, convert
    from streamconv.pipeline.options import ConvertOptions
    from streamconv.pipeline.result import ConversionResult
    from streamconv.sources.checkpoint import Checkpoint, open_checkpoint, read_safetensors_header
    from streamconv.sources.ref import TensorRef
    from streamconv.stages.names import rename, select
    from streamconv.stages.pieces import TensorChunk, cast, chunk
    from streamconv.tools.export import ExportResult, export
    from streamconv.tools.validate import ValidationReport, validate
    from streamconv.tools.verify import VerifyReport, verify


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamconv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "__version__",
    "Checkpoint",
    "ConversionResult",
    "ConvertOptions",
    "ExportResult",
    "ModelConverter",
    "StreamconvError",
    "TensorChunk",
    "TensorInfo",
    "TensorRecord",
    "TensorRef",
    "WeightsWriter",
    "cast",
    "chunk",
    "convert",
    "describe",
    "export",
    "iter_tensors",
    "load",
    "load_tensor",
    "open_checkpoint",
    "read_metadata",
    "read_safetensors_header",
    "rename",
    "select",
    "validate",
    "ValidationReport",
    "verify",
    "VerifyReport",
]
