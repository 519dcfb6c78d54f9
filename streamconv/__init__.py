"""streamconv: stream Hugging Face safetensors checkpoints into compressed Parquet weights.

Three ways in:

- ``streamconv convert MODEL -o OUT`` on the command line;
- :func:`convert` (or :class:`ModelConverter`) from Python, returning a :class:`ConversionResult`;
- the generator stages :func:`select`, :func:`rename`, :func:`chunk`, :func:`cast` over
  :func:`open_checkpoint`, written with :class:`WeightsWriter`.

Read the result back with :func:`load`, :func:`iter_tensors` or :func:`load_tensor`.
"""

from streamconv._version import __version__
from streamconv.convert import ConversionResult, ModelConverter, convert, plan_tensors
from streamconv.errors import StreamconvError
from streamconv.reader import describe, iter_tensors, load, load_tensor, read_metadata
from streamconv.source import Checkpoint, TensorRef, open_checkpoint, read_safetensors_header
from streamconv.stages import TensorChunk, cast, chunk, rename, select
from streamconv.writer import WeightsWriter

__all__ = [
    "__version__",
    "Checkpoint",
    "ConversionResult",
    "ModelConverter",
    "StreamconvError",
    "TensorChunk",
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
    "plan_tensors",
    "read_metadata",
    "read_safetensors_header",
    "rename",
    "select",
]
