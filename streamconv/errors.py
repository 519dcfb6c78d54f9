"""Every error streamconv raises on purpose.

Each error also inherits the builtin a caller would catch (``FileNotFoundError``, ``ValueError``...),
carries the facts as attributes, and its message is one line: what is wrong, then how to fix it.
The CLI prints ``error: <message>`` for these and exits non-zero without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "StreamconvError",
    "SourceNotFoundError",
    "NoWeightsError",
    "CorruptCheckpointError",
    "ShardIndexError",
    "UnsafeCheckpointError",
    "UnsafeInputError",
    "UnsupportedDtypeError",
    "OutputExistsError",
    "OutputNotWritableError",
    "DiskFullError",
    "FormatError",
    "NotConvertedError",
    "TensorNotFoundError",
    "PlanError",
    "AssetError",
    "MissingDependencyError",
    "InvalidOptionError",
    "CastOverflowError",
    "QuantizationBudgetError",
    "escape",
]


class StreamconvError(Exception):
    """Base class: an error with a message meant for the user, one line, with a fix."""

    exit_code = 1

    def render(self, label: Callable[[str, Any], str]) -> str:
        """The message with every option it names written by ``label(name, value_or_NOVALUE)``.

        ``str(error)`` is the message as a Python caller reads it (``force=True``); the CLI renders
        it with its flags (``--force``). Errors that name no option have one message for both.
        """
        return str(self)


class _NamesOptions(StreamconvError):
    """An error whose message names options through placeholders (see :class:`InvalidOptionError`).

    ``where`` (a path, printed first) is kept out of the template, so braces in it stay as they are.
    """

    template: str = ""
    where: str = ""
    values: dict[str, Any]

    def _set_message(self, template: str, where: Any, values: dict[str, Any]) -> None:
        self.template, self.where, self.values = template, "" if where is None else str(where), values
        self.args = (self.render(python_label),)

    def render(self, label: Callable[[str, Any], str]) -> str:
        def replace(match: re.Match[str]) -> str:
            name, has_value, literal = match.group(1), match.group(2), match.group(3)
            if name is None:  # {{ or }}: a brace of the text
                return match.group(0)[0]
            if not has_value:
                return label(name, NOVALUE)
            if literal:
                return label(name, _LITERALS.get(literal, literal))
            return label(name, self.values.get(name))

        text = _PLACEHOLDER.sub(replace, self.template)
        return f"{self.where}: {text}" if self.where else text

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceNotFoundError(StreamconvError, FileNotFoundError):
    """The checkpoint folder (or hub repository) does not exist."""

    exit_code = 2

    def __init__(self, source: str, hint: str = "") -> None:
        self.source = source
        fix = hint or "check the path, or pass a Hugging Face repo id such as 'org/name'"
        super().__init__(f"{source}: no such checkpoint folder; {fix}")


class NoWeightsError(StreamconvError, FileNotFoundError):
    """The folder exists but holds no weights, or SOURCE is a file that is not weights (``given``)."""

    exit_code = 2

    def __init__(self, folder: Path, found: list[str] | None = None, given: Path | None = None) -> None:
        self.folder = folder
        if given is not None:  # a file that holds no weights (config.json) was passed as SOURCE
            super().__init__(
                f"{given}: not a weights file (.safetensors or .bin); point SOURCE at the folder that "
                f"holds the model, {folder}"
            )
            return
        extra = ""
        if found:
            extra = (
                f" (found {', '.join(found)}: re-save it with "
                "`model.save_pretrained(dir, safe_serialization=True)` first)"
            )
        super().__init__(
            f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin{extra}; "
            "point SOURCE at a folder that contains the model's weights"
        )


class CorruptCheckpointError(StreamconvError, ValueError):
    """A safetensors file is empty, truncated, or its header does not describe its bytes."""

    exit_code = 3

    def __init__(self, path: Path, problem: str, fix: str = "") -> None:
        self.path = path
        self.problem = problem
        fix = fix or "the file is damaged or not safetensors: re-download or re-save it"
        super().__init__(f"{path}: {problem}; {fix}")


class UnsafeCheckpointError(StreamconvError, ValueError):
    """A pickled (``.bin``) checkpoint would build objects other than tensors; it was never run."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"{path}: refused: the pickle would run code or build objects that are not tensors ({problem}); "
            "it was not executed: convert only checkpoints you trust, saved as safetensors if possible"
        )


class UnsafeInputError(StreamconvError, ValueError):
    """A file or a path from the input is refused before it is read: it leads outside its folder, it
    is not a regular file (a FIFO, a device, a folder), or it is larger than the cap for its kind."""

    exit_code = 3

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}; {fix}")


class ShardIndexError(StreamconvError, ValueError):
    """``model.safetensors.index.json`` does not agree with the shards beside it."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"{path}: {problem}; re-download the checkpoint so the index and its shards match"
        )


class UnsupportedDtypeError(StreamconvError, TypeError):
    """Tensors whose dtype streamconv cannot store (all of them, in one error)."""

    exit_code = 3

    def __init__(self, path: Path, dtypes: dict[str, str], supported: list[str]) -> None:
        self.path = path
        self.dtypes = dtypes  # tensor source name -> safetensors dtype code
        named = ", ".join(f"{name!r} ({code})" for name, code in list(dtypes.items())[:5])
        more = f" and {len(dtypes) - 5} more" if len(dtypes) > 5 else ""
        excludes = " ".join(f"--exclude {name!r}" for name in list(dtypes)[:5])
        super().__init__(
            f"{path}: streamconv cannot store the dtype of tensor {named}{more} "
            f"(supported: {', '.join(supported)}); drop it with {excludes} or re-save the checkpoint"
        )


class OutputExistsError(_NamesOptions, FileExistsError):
    """The output folder exists and overwriting was not asked for.

    The message names ``force=True`` to a Python caller, ``--force`` on the command line.
    """

    exit_code = 4

    def __init__(self, output: Path) -> None:
        self.output = output
        self._set_message("output already exists; pass {force=True} to replace it", output, {})


class OutputNotWritableError(_NamesOptions, PermissionError):
    """The output folder cannot be created where it was asked for.

    ``option`` is the argument that chose the location (``output``; ``target`` for export).
    """

    exit_code = 4

    def __init__(self, output: Path, reason: str, option: str = "output") -> None:
        self.output = output
        self._set_message(
            f"cannot write the output here ({escape(reason)}); choose a writable {{{option}}}",
            output, {},
        )


class DiskFullError(_NamesOptions, OSError):
    """The disk (or a quota, or a file-size limit) ran out while the output was being written.

    Nothing is left behind: the partial output is removed before this is raised. ``errno`` is
    the original one (``ENOSPC``, ``EDQUOT`` or ``EFBIG``). ``option`` is the argument that chose
    the location (``output``; ``target`` for export), named in the fix.
    """

    exit_code = 4

    def __init__(self, output: Path, needed: int, free: int, errno: int, reason: str, option: str = "output") -> None:
        self.output = output
        self.needed = needed  # bytes the output is expected to take (an estimate; 0 if unknown)
        self.free = free  # bytes free on the output's filesystem once the partial output is gone
        mib = 1024 * 1024
        room = f"{free / mib:.1f} MiB free"
        if needed:
            room = f"it needs about {needed / mib:.1f} MiB, {room}"
        self._set_message(
            f"cannot write the output ({escape(reason)}); {room}; "
            f"free some space, raise the limit (quota, `ulimit -f`) or choose another {{{option}}}",
            output, {},
        )
        self.errno = errno
        self.strerror = reason


class FormatError(StreamconvError, ValueError):
    """A converted output does not follow the streamconv Parquet format."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}; re-run `streamconv convert` to rebuild the output")


class NotConvertedError(StreamconvError, FileNotFoundError):
    """A path given as a converted output holds no streamconv weights or metadata."""

    exit_code = 2

    def __init__(self, path: Path, missing: str) -> None:
        self.path = path
        super().__init__(f"{path}: no {missing} here; pass a folder written by `streamconv convert`")


class TensorNotFoundError(StreamconvError, KeyError):
    """A tensor asked for by name is not in the converted output."""

    exit_code = 2

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        super().__init__(f"{path}: no tensor named {name!r}; list them with `streamconv inspect`")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class PlanError(StreamconvError, ValueError):
    """The checkpoint does not match the model plan it is converted with."""

    exit_code = 3


class AssetError(StreamconvError, ValueError):
    """A file to ship beside the weights (config, tokenizer...) cannot be copied or built."""

    exit_code = 3

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}; {fix}")


class MissingDependencyError(StreamconvError, ImportError):
    """An optional dependency is needed for this step and is not installed."""

    exit_code = 5

    def __init__(self, package: str, needed_for: str, install: str = "pip install 'streamconv[validate]'") -> None:
        self.package = package
        super().__init__(f"{package} is needed {needed_for} but is not installed; install it with `{install}`")


class InvalidOptionError(_NamesOptions, ValueError):
    """An option has a value streamconv cannot use.

    The message names options through placeholders, so that Python callers read the argument
    (``level=5``) and the CLI its flag (``--level 5``): ``{name}`` is the option, ``{name=}`` the
    option with the value given in ``values``, ``{name=text}`` the option with a literal value
    (``{force=True}`` reads ``force=True``, and ``--force`` on the command line); ``{{`` is a
    brace (:func:`escape` doubles those of a text). ``where`` is a path put before the message as it is.

    Attributes:
        argument: The option at fault (a field of :class:`streamconv.pipeline.options.ConvertOptions`, or a
            keyword of the function called).
        values: The values the message quotes, by option name.
    """

    exit_code = 2

    def __init__(self, template: str, argument: str | None = None, *, where: Any = None, **values: Any) -> None:
        self.argument = argument
        self._set_message(template, where, values)


#: Marks an option mentioned without a value in an :class:`InvalidOptionError` message.
NOVALUE: Any = object()
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)(=([^}]*))?\}")
_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None}


def python_label(name: str, value: Any) -> str:
    """How a Python caller reads an option in a message: ``level`` or ``level=5``."""
    return name if value is NOVALUE else f"{name}={value!r}"


def escape(text: str) -> str:
    """``text`` put into a template as it is: its braces are doubled, so none reads as a placeholder."""
    return text.replace("{", "{{").replace("}", "}}")


class CastOverflowError(StreamconvError, ArithmeticError):
    """A tensor of several chunks does not fit the target dtype, found while casting without a scan.

    Raised by :func:`streamconv.cast` with ``prescan=False`` once some of the tensor's chunks may
    already have been cast; :func:`streamconv.convert` then starts again with ``prescan=True``.
    """

    exit_code = 3

    def __init__(self, tensor: str, peak: float, dtype: str) -> None:
        self.tensor = tensor
        self.peak = peak
        super().__init__(
            f"tensor {tensor!r} has values up to {peak:.6g}, beyond {dtype}'s range, found after "
            "casting had begun; cast with prescan=True so such tensors are scanned first"
        )


class QuantizationBudgetError(StreamconvError, ArithmeticError):
    """A chunk of a tensor quantized to int8 has a quantization error beyond the budget.

    Raised while writing (streamconv.stages.quantize); :func:`streamconv.convert` then writes again
    with that tensor kept in float16, and lists it.
    """

    exit_code = 3

    def __init__(self, tensor: str, error: float, budget: float) -> None:
        self.tensor = tensor
        self.error = error
        super().__init__(
            f"tensor {tensor!r} has an int8 quantization error of {error:.3g}, beyond the budget of {budget}; "
            "keep it in float16 (convert does so by itself)"
        )
