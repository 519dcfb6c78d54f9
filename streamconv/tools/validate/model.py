"""The output check: one model in memory at a time, loaded by transformers' own loading path.

1. The original model is built with ``from_pretrained`` from the source's tensors, and every
   probe's reference output is computed; then the model is dropped.
2. The same class is built again with ``from_pretrained`` from the output's tensors, so that
   transformers applies its own renames and fusions (ViT's attention projections, Mixtral's
   experts stacked into one tensor): what the output holds is what the model runs.
3. Model tensors the output does not provide are *poisoned* (NaN; integers -1), so that one
   cannot silently keep transformers' fresh initialisation; the probes run again and are
   compared with the reference outputs.

The tensors go to ``from_pretrained`` as lazy values that transformers reads one at a time, with
its loading made sequential, so memory holds the model plus one tensor (or one group it fuses),
never a second copy of the model. A lazy value records that it was read: a stored tensor
transformers never reads is a tensor the model does not use. Tensors outside the transformers
model (a sentence-transformers Dense layer) are handed to the probes through
:attr:`ProbeContext.extras`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamconv.dtypes import by_numpy
from streamconv.errors import MissingDependencyError
from streamconv.format.reader import WeightsFile
from streamconv.messages import one_line
from streamconv.plans import ProbeContext
from streamconv.sources.ref import TensorRef

__all__ = ["Built", "ModelProblem", "build_model", "capture", "import_torch", "output_state", "source_state"]


def import_torch() -> tuple[Any, Any]:
    """torch and transformers, or a :class:`MissingDependencyError` saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "torch", "to validate against the original model", "pip install torch 'streamconv[validate]'"
        ) from exc
    transformers.logging.disable_progress_bar()  # our caller reports progress
    return torch, transformers


@contextlib.contextmanager
def capture(transformers: Any, messages: list[str]) -> Iterator[None]:
    """Collect what transformers logs, warns and prints (its load report) into ``messages``.

    Nothing reaches the terminal: transformers' own stderr handler is off, its warnings and
    errors go to ``messages`` instead (one entry per record), and so do Python warnings and
    anything printed to stdout or stderr. The caller shows them with ``--debug``, or counts them.
    """
    import warnings

    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_default_handler()
    handler = _ListHandler(messages)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        transformers.logging.enable_default_handler()
        transformers.logging.set_verbosity(previous)
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        messages.extend(line for line in (out.getvalue() + err.getvalue()).splitlines() if line.strip())


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname.lower()}: {record.getMessage()}")


class ModelProblem(Exception):
    """transformers cannot build or run the model: one line saying why (a failed check, not a crash)."""


class Lazy:
    """One tensor for ``from_pretrained``'s ``state_dict``: read when transformers materialises it
    (``value[...]``, as it does a safetensors slice), and recorded in ``used``."""

    def __init__(self, name: str, read: Any, used: set[str]) -> None:
        self.name, self._read, self._used = name, read, used

    def __getitem__(self, index: Any) -> Any:
        self._used.add(self.name)
        tensor = self._read()
        return tensor if index is Ellipsis else tensor[index]


#: transformers' switch for loading on one thread: each lazy tensor is then read when its turn
#: comes, not all of them at once by a pool that runs ahead.
SEQUENTIAL_LOADING = "HF_DEACTIVATE_ASYNC_LOAD"


@contextlib.contextmanager
def _sequential_loading() -> Iterator[None]:
    previous = os.environ.get(SEQUENTIAL_LOADING)
    os.environ[SEQUENTIAL_LOADING] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SEQUENTIAL_LOADING, None)
        else:
            os.environ[SEQUENTIAL_LOADING] = previous


class Built:
    """A model built by ``from_pretrained`` from lazy tensors, and what its loading said.

    Attributes:
        model: The model, float32, eval mode.
        used: Source names of the tensors transformers read into the model.
        missing: Model keys no tensor provided (after transformers' own ignore lists).
        mismatched: ``key (stored [..], model [..])`` for tensors of another shape than the model's.
    """

    def __init__(self, model: Any, used: set[str], info: dict[str, Any]) -> None:
        self.model, self.used = model, used
        self.missing = set(info.get("missing_keys") or ())
        mismatched = info.get("mismatched_keys") or ()
        self.mismatched = [f"{key} (stored {list(got)}, model {list(want)})" for key, got, want in mismatched]
        self.mismatched_keys = {entry[0] for entry in mismatched}


def build_model(
    torch: Any, transformers: Any, class_name: str, config: Any, tensors: dict[str, Any], messages: list[str]
) -> Built:
    """``class_name.from_pretrained`` on ``tensors`` (source name -> ``read()`` callable), float32.

    Raises:
        ModelProblem: transformers cannot build the model from these tensors.
    """
    cls = getattr(transformers, class_name, None) or transformers.AutoModel
    used: set[str] = set()
    state = {name: Lazy(name, read, used) for name, read in tensors.items()}
    try:
        with capture(transformers, messages), _sequential_loading():
            model, info = cls.from_pretrained(
                None, config=config, state_dict=state, dtype=torch.float32,
                ignore_mismatched_sizes=True, output_loading_info=True,
            )
    except Exception as exc:  # transformers raises what it likes; the check fails with its words
        raise ModelProblem(f"transformers cannot build {class_name} from these tensors: {_one_line(exc)}") from exc
    return Built(model.eval(), used, info)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(one_line(str(exc)) or type(exc).__name__)[:300]}"


def model_keys(model: Any, names: list[str]) -> dict[str, str]:
    """The model key transformers loads each source name into (its renames and fusions applied).

    Done with transformers' own ``rename_source_key`` and the model's conversion mapping, as
    ``from_pretrained`` does; names are kept as they are when this transformers has neither.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        meta = model.state_dict()
        prefix = model.base_model_prefix
        keys = {}
        for name in names:
            key, _ = rename_source_key(name, renamings, converters, prefix, meta)
            if key not in meta and name in meta:
                key, _ = rename_source_key(name, [], [], prefix, meta)
            keys[name] = key
        return keys
    except Exception:  # another transformers: its internals differ; names are then taken as they are
        return {n: n for n in names}


def non_persistent_buffers(model: Any) -> set[str]:
    """Buffers the model keeps out of its state dict (``position_ids``...): a checkpoint may still hold them."""
    return {name for name, _ in model.named_buffers()} - set(model.state_dict())


def poison(torch: Any, model: Any, keys: set[str]) -> None:
    """Overwrite the model tensors ``keys``: NaN for floats, -1 for integers."""
    state = model.state_dict()
    with torch.no_grad():
        for key in keys & set(state):
            tensor = state[key]
            tensor.fill_(float("nan") if tensor.is_floating_point() else -1)


def release(torch: Any, model: Any) -> None:
    """Free every parameter and buffer of ``model`` (each becomes an empty tensor of its dtype)."""
    with torch.no_grad():
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for tensor in table.values():
                    if tensor is not None:
                        tensor.data = torch.empty(0, dtype=tensor.dtype)


def source_state(torch: Any, refs: list[TensorRef]) -> dict[str, Any]:
    """``read()`` callables for the source's tensors, by source name (floats in float32)."""
    return {ref.source_name: (lambda ref=ref: _float32(torch, ref)) for ref in refs}


#: Elements converted to float32 at a time: a tensor stored in 16 bits is never held whole in
#: both its stored dtype and float32 (16 MiB of float32 a slice).
SLICE_ELEMENTS = 4 * 1024 * 1024


def output_state(torch: Any, output: Path, skip: set[str]) -> dict[str, Any]:
    """``read()`` callables for the output's tensors, by source name, each read alone (floats in float32)."""
    weights = WeightsFile(output)

    def read(stored: str) -> Any:
        entry = weights.entries[stored]
        if not _is_16_bit_float(entry.dtype.numpy):
            return _torch(torch, next(weights.records([stored])).array)
        target = torch.empty(entry.info.numel, dtype=torch.float32)
        for _, offset, chunk in weights.chunks([stored], workers=1):
            target[offset:offset + chunk.size] = _torch(torch, chunk)
        return target.reshape(entry.shape)

    return {
        entry.info.source_name: (lambda stored=stored: read(stored))
        for stored, entry in weights.entries.items() if entry.info.source_name not in skip
    }


def _is_16_bit_float(dtype: Any) -> bool:
    return by_numpy(dtype).is_float and dtype.itemsize == 2


def _torch(torch: Any, array: Any) -> Any:
    """A numpy array as a torch tensor: floating types in float32, others as stored."""
    import numpy as np

    if array.dtype.name == "bfloat16":  # torch cannot take ml_dtypes' bfloat16 from numpy
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16).float()
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32, copy=False))
    return torch.from_numpy(array)


def _float32(torch: Any, ref: TensorRef) -> Any:
    """One source tensor as a torch tensor: floating types in float32 (converted a slice at a time), others as stored."""
    if not _is_16_bit_float(ref.dtype):
        return _torch(torch, ref.read().reshape(ref.shape))
    target = torch.empty(ref.numel, dtype=torch.float32)
    for start in range(0, ref.numel, SLICE_ELEMENTS):
        stop = min(ref.numel, start + SLICE_ELEMENTS)
        target[start:stop] = _torch(torch, ref.read(start, stop))
    return target.reshape(ref.shape)


def probe_extras(torch: Any, refs: list[TensorRef]) -> dict[str, Any]:
    """Tensors outside the transformers model (Dense layers...), float32, for the probes."""
    return {ref.source_name: _torch(torch, ref.read().reshape(ref.shape)).float() for ref in refs}


def output_extras(torch: Any, output: Path, names: set[str]) -> dict[str, Any]:
    """The output's tensors whose source names are ``names``, float32, for the probes."""
    weights = WeightsFile(output)
    stored = [n for n, e in weights.entries.items() if e.info.source_name in names]
    return {r.source_name: _torch(torch, r.array).float() for r in weights.records(stored)} if stored else {}


def new_context(torch: Any, model: Any, output: Path, metadata: dict[str, Any], root: Path, seed: int) -> ProbeContext:
    """The probe context of a validation."""
    return ProbeContext(torch, model, output, metadata, seed=seed, source=root)
