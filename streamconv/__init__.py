"""streamconv: stream Hugging Face safetensors checkpoints into compressed Parquet weights.

Three ways in:

- ``streamconv convert MODEL -o OUT`` on the command line;
- :func:`convert` (or :class:`ModelConverter`) from Python, with :class:`ConvertOptions`,
  returning a :class:`ConversionResult`;
- the generator stages :func:`select`, :func:`rename`, :func:`chunk`, :func:`cast` over
  :func:`open_checkpoint`, written with :class:`WeightsWriter`.

Check an output against its source with :func:`validate` (imports torch and transformers when
called, not when ``streamconv`` is imported), returning a :class:`ValidationReport`.

Read the result back with :func:`load`, :func:`iter_tensors` (records with names, dtypes and
arrays), :func:`load_tensor` or :func:`describe`.
"""

from streamconv._version import __version__
from streamconv.convert import ModelConverter, convert
from streamconv.errors import StreamconvError
from streamconv.options import ConvertOptions
from streamconv.reader import TensorInfo, TensorRecord, describe, iter_tensors, load, load_tensor, read_metadata
from streamconv.result import ConversionResult
from streamconv.source import Checkpoint, TensorRef, open_checkpoint, read_safetensors_header
from streamconv.stages import TensorChunk, cast, chunk, rename, select
from streamconv.writer import WeightsWriter

__all__ = [
    "__version__",
    "Checkpoint",
    "ConversionResult",
    "ConvertOptions",
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
]


def __getattr__(name: str) -> object:
    """``validate`` and ``ValidationReport`` import torch: loaded on first use, not by ``import streamconv``."""
    if name in ("validate", "ValidationReport"):
        import streamconv.validate as validation  # a callable module: streamconv.validate(...) works too

        return validation if name == "validate" else validation.ValidationReport
    raise AttributeError(f"module 'streamconv' has no attribute {name!r}")
