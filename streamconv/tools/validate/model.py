"""The output check: one model in memory, reference outputs first, then the output's weights.

1. The original model is loaded (``from_pretrained`` on the source's tensors, read one at a time
   in float32) and every probe's reference output is computed.
2. Every model tensor the source holds is *poisoned* (NaN; integers -1), so a tensor the output
   does not provide cannot silently keep the original's value: the model is in effect built from
   its config with fresh weights.
3. The output's tensors are copied into the same model one at a time, by source name; the probes
   run again and are compared with the reference outputs.

Tensors the model does not use (a sentence-transformers Dense layer) are handed to the probes
through :attr:`ProbeContext.extras`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamconv.errors import MissingDependencyError, PlanError
from streamconv.format.reader import iter_tensors
from streamconv.plans import Plan, ProbeContext
from streamconv.sources.checkpoint import Checkpoint
from streamconv.sources.ref import TensorRef

__all__ = ["LoadedModel", "capture", "import_torch", "load_reference"]


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


def load_reference(torch: Any, transformers: Any, checkpoint: Checkpoint, class_name: str, messages: list[str]) -> Any:
    """The original model in float32, eval mode, with transformers' output captured.

    The source's tensors are read one at a time into float32 tensors that transformers adopts as
    the model's parameters without copying them. Its own loader maps the shards instead, and every
    page it touches stays resident until it returns: the checkpoint's size on top of the float32
    model (3.5 GB instead of 2.6 GB for a 1.1 GB bfloat16 checkpoint).

    Raises:
        PlanError: transformers cannot load the checkpoint.
    """
    cls = getattr(transformers, class_name, None) or transformers.AutoModel
    root = str(checkpoint.root)
    try:
        with capture(transformers, messages):
            config = transformers.AutoConfig.from_pretrained(root)
            state = {ref.source_name: _float32(torch, ref) for ref in checkpoint.tensors}
            model = cls.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise PlanError(
            f"{root}: transformers cannot load this checkpoint as {class_name} ({exc}); "
            "validation needs a transformers model"
        ) from exc
    return model.eval()


def _float32(torch: Any, ref: TensorRef) -> Any:
    """One source tensor as a torch tensor: floating types in float32, others as stored."""
    import numpy as np

    array = ref.read().reshape(ref.shape)
    if array.dtype.name == "bfloat16":  # torch cannot take ml_dtypes' bfloat16 from numpy
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).float()
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32, copy=False))
    return torch.from_numpy(array)


class LoadedModel:
    """The model's saved tensors and how output source names map onto them.

    Args:
        torch: The torch module.
        model: The reference model.
        source_names: The source checkpoint's tensor names (the truth of what is saved).
    """

    def __init__(self, torch: Any, model: Any, source_names: list[str]) -> None:
        self.torch = torch
        self.model = model
        # state_dict() holds the model's own tensors (no copy); non-persistent buffers are not in it.
        self.state = model.state_dict(keep_vars=False)
        prefix = getattr(model, "base_model_prefix", "") or ""
        self._prefix = f"{prefix}." if prefix else ""
        self.expected = {name: key for name in source_names if (key := self.key(name)) is not None}

    def key(self, source_name: str) -> str | None:
        """The model's state-dict key for a source tensor name (layouts add or drop a prefix)."""
        if source_name in self.state:
            return source_name
        for candidate in (source_name.partition(".")[2], self._prefix + source_name):
            if candidate and candidate in self.state:
                return candidate
        if self._prefix and source_name.startswith(self._prefix):
            rest = source_name[len(self._prefix):]
            return rest if rest in self.state else None
        return None

    def poison(self) -> None:
        """Overwrite every model tensor the source holds: NaN for floats, -1 for integers."""
        with self.torch.no_grad():
            for key in set(self.expected.values()):
                tensor = self.state[key]
                tensor.fill_(float("nan") if tensor.is_floating_point() else -1)

    def load_output(self, output: Path, progress: Any = None) -> tuple[set[str], dict[str, Any], list[str]]:
        """Copy the output's tensors into the model one at a time.

        Returns:
            The source names loaded into the model, the tensors the model does not use (by source
            name, float32 torch tensors, for the probes), and shape mismatches.
        """
        import numpy as np

        loaded, extras, bad_shapes = set(), {}, []
        for record in iter_tensors(output):
            array = record.array
            if array.dtype.name == "bfloat16":
                array = array.astype(np.float32)
            key = self.key(record.source_name)
            if key is None:
                extras[record.source_name] = self.torch.from_numpy(np.array(array, dtype=np.float32))
            else:
                target = self.state[key]
                if tuple(target.shape) != tuple(array.shape):
                    bad_shapes.append(f"{record.name} (stored {list(array.shape)}, model {list(target.shape)})")
                else:
                    with self.torch.no_grad():
                        target.copy_(self.torch.from_numpy(np.asarray(array)))
                    loaded.add(record.source_name)
            if progress is not None:
                progress.update(1)
        return loaded, extras, bad_shapes


def source_extras(torch: Any, plan: Plan, checkpoint: Any, loaded: LoadedModel) -> dict[str, Any]:
    """The source's tensors the model does not hold (Dense layers...), float32, for the probes."""
    import numpy as np

    extras = {}
    for ref in plan.tensors(checkpoint):
        if loaded.key(ref.source_name) is None:
            array = ref.read().reshape(ref.shape)
            extras[ref.source_name] = torch.from_numpy(np.array(array, dtype=np.float32))
    return extras


def new_context(torch: Any, model: Any, output: Path, metadata: dict[str, Any], root: Path, seed: int) -> ProbeContext:
    """The probe context of a validation."""
    return ProbeContext(torch, model, output, metadata, seed=seed, source=root)
