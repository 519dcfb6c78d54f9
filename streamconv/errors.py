"""Every error streamconv raises on purpose.

Each error also inherits the builtin a caller would catch (``FileNotFoundError``, ``ValueError``...),
carries the facts as attributes, and its message is one line: what is wrong, then how to fix it.
The CLI prints ``error: <message>`` for these and exits non-zero without a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamconv.messages import escape, one_line, python_label, render

__all__ = [
    "StreamconvError",
    "SourceNotFoundError",
    "HubError",
    "NoWeightsError",
    "CorruptCheckpointError",
    "ShardIndexError",
    "UnsafeCheckpointError",
    "UnsafeInputError",
    "UnsupportedDtypeError",
    "OutputExistsError",
    "OutputRefusedError",
    "OutputNotWritableError",
    "DiskFullError",
    "FormatError", "OutOfMemoryError", "OutputChangedError",
    "NotConvertedError", "PartOfSplitError",
    "TensorNotFoundError",
    "PlanError",
    "AssetError",
    "MissingDependencyError",
    "InvalidOptionError",
    "CastOverflowError", "QuantizationBudgetError",
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
        text = render(self.template, self.values, label)
        return f"{self.where}: {text}" if self.where else text

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceNotFoundError(StreamconvError, FileNotFoundError):
    """The checkpoint folder (or hub repository) does not exist."""

    exit_code = 2

    def __init__(self, source: str, hint: str = "", problem: str = "no such checkpoint folder") -> None:
        self.source = source
        fix = hint or "check the path, or pass a Hugging Face repo id such as 'org/name'"
        super().__init__(f"{source}: {problem}; {fix}")


class HubError(StreamconvError, ConnectionError):
    """The hub could not be read to the end (a transfer that kept failing, a file that changed):
    ``where`` is the repo or the file (as its path in the snapshot folder), ``problem`` what happened."""

    exit_code = 7

    def __init__(self, where: Any, problem: str, fix: str = "") -> None:
        self.where, self.problem = where, problem
        fix = fix or "check the network (or the hub's status page) and run again"
        super().__init__(f"{where}: {problem}; {fix}")


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
        self.path, self.problem = path, problem
        fix = fix or "the file is damaged or not safetensors: re-download or re-save it"
        super().__init__(f"{path}: {problem}; {fix}")


class UnsafeCheckpointError(StreamconvError, ValueError):
    """A pickled (``.bin``) checkpoint would build objects other than tensors; it was never run."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(
            f"{path}: refused: the pickle would run code or build objects that are not tensors ({problem}); "
            "it was not executed: convert only checkpoints you trust, saved as safetensors if possible"
        )


class UnsafeInputError(StreamconvError, ValueError):
    """A file or a path from the input is refused before it is read: it leads outside its folder, it
    is not a regular file (a FIFO, a device, a folder), or it is larger than the cap for its kind."""

    exit_code = 3

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}; {fix}")


class ShardIndexError(StreamconvError, ValueError):
    """``model.safetensors.index.json`` does not agree with the shards beside it."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}; re-download the checkpoint so the index and its shards match")


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


class OutputRefusedError(_NamesOptions, FileExistsError):
    """The output name holds what streamconv did not write, so it is never replaced, even with ``force``:
    a folder of other files, a file, a symlink, the current folder or one above it, or a folder the
    run reads (the source; for export, the output exported and its source). ``what`` says what is
    there; ``option`` is the argument that named the output (``target`` for export); ``removable`` is
    false for what the user keeps (the source, the current folder): the fix is then another output.
    """

    exit_code = 4

    def __init__(self, output: Path, what: str, option: str = "output", removable: bool = True) -> None:
        self.output, self.what = output, what
        if removable:  # a folder of other files, a file, a symlink: the user's to remove
            fix = f"remove it yourself or choose another {{{option}}}"
            text = f"{escape(what)}; streamconv replaces only its own output or an empty folder, even with {{force=True}}"
        else:  # the source, the current folder: to keep
            fix = f"choose another {{{option}}}"
            text = f"{escape(what)}, which streamconv never replaces, even with {{force=True}}"
        self._set_message(f"{text}: {fix}", output, {})


class OutputNotWritableError(_NamesOptions, PermissionError):
    """The output folder cannot be created where it was asked for.

    ``option`` is the argument that chose the location (``output``; ``target`` for export).
    """

    exit_code = 4

    def __init__(self, output: Path, reason: str, option: str = "output") -> None:
        self.output = output
        self._set_message(f"cannot write the output here ({escape(reason)}); choose a writable {{{option}}}", output, {})


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
        room = f"{free / 2**20:.1f} MiB free"
        room = f"it needs about {needed / 2**20:.1f} MiB, {room}" if needed else room
        self._set_message(f"cannot write the output ({escape(reason)}); {room}; free some space, raise the limit "
                          f"(quota, `ulimit -f`) or choose another {{{option}}}", output, {})
        self.errno, self.strerror = errno, reason


class FormatError(StreamconvError, ValueError):
    """A converted output does not follow the streamconv Parquet format."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = one_line(problem)
        super().__init__(f"{path}: {self.problem}; re-run `streamconv convert` to rebuild the output")


class OutOfMemoryError(StreamconvError, MemoryError):
    """Memory ran out reading an output: the process's limit is at fault, not the file (``needed``: bytes, or 0)."""

    exit_code = 8

    def __init__(self, path: Path | None, doing: str, needed: int = 0) -> None:
        self.path, self.needed = path, needed
        amount = f" (an allocation of {needed / 2**20:.1f} MiB failed)" if needed else ""
        super().__init__(f"{'' if path is None else f'{path}: '}memory ran out while {one_line(doing)}{amount}; the file is not "
                         "known to be damaged: raise the memory limit (`ulimit -v`, the container's), stop other programs, "
                         "or convert again with a smaller --chunk-size")


class OutputChangedError(StreamconvError, ValueError):
    """A split output's files kept changing while read (replaced with ``--force``): they were not one output's."""

    exit_code = 3

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, one_line(problem)
        super().__init__(f"{path}: the output changed while it was being read ({self.problem}); read it again")


class NotConvertedError(StreamconvError, FileNotFoundError):
    """A path given as a converted output holds no streamconv weights or metadata."""

    exit_code = 2

    def __init__(self, path: Path, missing: str) -> None:
        self.path = path
        super().__init__(f"{path}: no {missing} here; pass a folder written by `streamconv convert`")


class PartOfSplitError(StreamconvError, ValueError):
    """One file of a split output given for the output; ``folder`` holds its index (None: not beside it)."""

    exit_code = 2

    def __init__(self, path: Path, part: int, count: int, folder: Path | None) -> None:
        self.path, self.part, self.count, self.folder = path, part, count, folder
        where = f"the split output in {folder}; pass the folder" if folder else "a split output; pass the folder of all its files"
        super().__init__(f"{path}: part {part} of {count} of {where}")


class TensorNotFoundError(StreamconvError, KeyError):
    """A tensor asked for by name is not in the converted output."""

    exit_code = 2

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
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
        self.path, self.problem = path, problem
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
    """A chunk of a tensor quantized to int8 has an error beyond the budget (streamconv.stages.quantize);
    :func:`streamconv.convert` then writes again with that tensor kept in float16, and lists it."""

    exit_code = 3

    def __init__(self, tensor: str, error: float, budget: float) -> None:
        self.tensor, self.error = tensor, error
        super().__init__(f"tensor {tensor!r} has an int8 quantization error of {error:.3g}, beyond the budget of "
                         f"{budget}; keep it in float16 (convert does so by itself)")
