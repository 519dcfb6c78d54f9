"""Every option of a conversion, as one frozen value checked completely when it is made.

The CLI's flags are these field names (``--chunk-size`` is ``chunk_size``; ``--type`` is
``model_type``), so the CLI, :func:`streamconv.convert` and :class:`streamconv.ModelConverter`
build the same object, and nothing is read or written before every option has been checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamconv.constants import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMPRESSION,
    DEFAULT_DTYPE,
    DEFAULT_WORKERS,
    canonical_dtype,
    check_chunk_size,
    check_codec,
    check_dtype,
    check_workers,
)
from streamconv.errors import InvalidOptionError
from streamconv.units import article, parse_size

__all__ = ["ConvertOptions"]

@dataclass(frozen=True)
class ConvertOptions:
    """How to convert a checkpoint.

    Attributes:
        model_type: ``auto`` or a plan name (``streamconv types``), or an old spelling of one
            (``sentence_transformer``).
        parts: Plan parts to convert (``vision``, ``text``...); ``None`` for the plan's defaults.
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep`` (also spelt ``fp16``/``f16``,
            ``bf16``, ``fp32``/``f32``). Integer and bool tensors are never cast; a tensor with
            values beyond float16's range is kept in float32.
        compression: ``zstd`` or ``none``.
        level: zstd level -7 to 22 on every byte plane; ``None`` (default) for the coder tuned per
            plane (docs/format.md). Refused with ``compression='none'``.
        keep_float: With ``dtype="int8"``, glob patterns over source tensor names of weight
            matrices kept in float16 (a pattern matching no tensor is warned about).
        include: Glob patterns over source tensor names; keep only tensors matching one.
        exclude: Glob patterns over source tensor names; drop tensors matching one.
        chunk_size: Largest chunk (one Parquet row), in source bytes: an int, or a size string
            (``"4MiB"`` = 4 * 2**20, ``"4MB"`` = 4 * 10**6, see :mod:`streamconv.units`).
        max_file_size: Split the weights into files of at most this many bytes (int or size string)
            (``weights-00001-of-0000N.parquet`` + ``weights.parquet.index.json``); ``None``: one file.
            At least ``chunk_size``: a chunk never spans two files.
        workers: Threads that read, cast and compress chunks.
        revision: Hub branch, tag or commit, for hub sources.
        download: For a hub source, download the whole snapshot into the Hugging Face cache and
            convert from there, instead of reading only the kept tensors' byte ranges.
        force: Replace the output if it exists.
        dry_run: Plan and estimate only; write nothing.
        strict: Fail, instead of warning, when an asset cannot be copied or built.
        progress: Show a progress bar on stderr (unless ``STREAMCONV_DISABLE_PROGRESS_BARS`` or
            ``HF_HUB_DISABLE_PROGRESS_BARS`` is set: :mod:`streamconv.progress`).
        validate: After writing, validate the output against the source (needs torch and
            transformers) and record the report as metadata.json's ``validation`` section.
        tqdm_class: The tqdm class for the bar (``tqdm.auto.tqdm`` by default).

    Raises:
        InvalidOptionError: any field out of range, naming the argument.
    """

    model_type: str = "auto"
    parts: tuple[str, ...] | None = None
    dtype: str = DEFAULT_DTYPE
    compression: str = DEFAULT_COMPRESSION
    level: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_float: tuple[str, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_file_size: int | None = None
    workers: int = DEFAULT_WORKERS
    revision: str | None = None
    download: bool = False
    force: bool = False
    dry_run: bool = False
    strict: bool = False
    progress: bool = False
    validate: bool = False
    tqdm_class: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Lists become tuples (the value stays hashable and frozen); a lone string is one pattern.
        for name in ("parts", "include", "exclude", "keep_float"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [p for p in value.split(",") if p] if name == "parts" else [value]
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        # Other spellings become the canonical ones: fp16 -> float16, "4MiB" -> 4194304.
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        for name in ("chunk_size", "max_file_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, parse_size(getattr(self, name), name))
        _check_types(self)
        _check_values(self)

    @classmethod
    def build(cls, base: ConvertOptions | None = None, overrides: Mapping[str, Any] | None = None) -> ConvertOptions:
        """``base`` (or the defaults) with ``overrides`` applied, refusing unknown names.

        Raises:
            InvalidOptionError: an override that is not an option.
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidOptionError(
                f"unknown option {', '.join(map(repr, unknown))}; the options are "
                f"{', '.join(f.name for f in dataclasses.fields(cls))}",
                unknown[0],
            )
        return dataclasses.replace(base, **overrides) if base is not None else cls(**overrides)



def _check_types(options: ConvertOptions) -> None:
    expected: dict[str, tuple[type, ...]] = {
        "model_type": (str,), "dtype": (str,), "compression": (str,), "chunk_size": (int,),
        "workers": (int,), "download": (bool,), "force": (bool,), "dry_run": (bool,), "strict": (bool,), "progress": (bool,),
        "validate": (bool,),
    }
    optional = {"level": (int,), "revision": (str,), "max_file_size": (int,)}
    for name, types in {**expected, **optional}.items():
        value = getattr(options, name)
        if value is None and name in optional:
            continue
        wrong_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or wrong_bool:
            raise InvalidOptionError(
                f"{{{name}=}} is {article(type(value).__name__)}; give {article(types[0].__name__)}", name, **{name: value}
            )
    for name in ("parts", "include", "exclude", "keep_float"):
        value = getattr(options, name)
        if value is not None and not all(isinstance(p, str) and p for p in value):
            raise InvalidOptionError(f"{{{name}=}} must be non-empty strings", name, **{name: value})


def _check_values(options: ConvertOptions) -> None:
    from streamconv.plans import check_plan_options  # plans import nothing heavy

    check_dtype(options.dtype)
    check_codec(options.compression, options.level)
    check_chunk_size(options.chunk_size)
    if options.max_file_size is not None and options.max_file_size < options.chunk_size:
        raise InvalidOptionError(
            "{max_file_size=} is smaller than one chunk ({chunk_size=}); a chunk never spans two files: "
            "give a larger {max_file_size}, or a smaller {chunk_size}",
            "max_file_size",
            max_file_size=options.max_file_size,
            chunk_size=options.chunk_size,
        )
    check_workers(options.workers)
    if options.keep_float and options.dtype != "int8":
        raise InvalidOptionError("{keep_float=} only applies to {dtype=int8}; drop {keep_float}, or give {dtype=int8}",
                                 "keep_float", keep_float=list(options.keep_float), dtype=options.dtype)
    # An old spelling (sentence_transformer) becomes the plan's name.
    object.__setattr__(options, "model_type", check_plan_options(options.model_type, options.parts))


def option_names() -> Sequence[str]:
    """The field names, in order (the CLI's argument names)."""
    return [f.name for f in dataclasses.fields(ConvertOptions)]
