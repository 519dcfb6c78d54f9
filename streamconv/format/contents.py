"""What ``metadata.json`` may hold: one table of its keys and their types, checked once, when it is read.

Every reader (``inspect``, ``verify``, ``export``, ``validate``, the plans' ``describe``) then trusts
the types of the keys below: a wrong type is one :class:`~streamconv.errors.FormatError` naming the
key, never a ``TypeError`` or ``KeyError`` somewhere later. Keys not in the table are allowed (a
newer writer may add some); keys of format 1 (docs/format.md) are in it too. A plan's own key is
the plan's to check (``format`` knows no plan).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamconv.errors import FormatError

__all__ = ["METADATA_TYPES", "check_metadata"]

# A type is one of these names, a tuple of alternatives, ``[T]`` (a list of T), or a dict of keys
# and types (an object; its other keys allowed). ``count`` is a non-negative int.
_FILE = {"path": "str", "bytes": "count", "sha256": "str", "built_from": ["str"]}

#: Every key streamconv reads from ``metadata.json``, with its type (docs/format.md lists them).
METADATA_TYPES: dict[str, Any] = {
    "format": "str",
    "format_version": "count",
    "streamconv_version": "str",
    "created": "str",
    "source": {
        "id": "str", "path": "str", "repo_id": ("str", "null"), "revision": ("str", "null"),
        "config_model_type": ("str", "null"), "architectures": (["str"], "null"),
        "files": [{"path": "str", "bytes": "count"}],
    },
    "model_type": "str",
    "detected": "bool",
    "parts": ["str"],
    "source_layout": "str",
    "dtype": "str",
    "compression": ("str", {"codec": "str", "level": ("int", "null"), "byte_planes": "bool"}),
    "level": ("int", "null"),
    "chunk_size": "count",
    "tensor_count": "count",
    "chunk_count": "count",
    "parameter_count": "count",
    "source_bytes": "count",
    "output_bytes": "count",
    "ratio": "number",
    "stored_dtypes": "object",
    "seconds": "number",
    "warnings": ["str"],
    "assets": [_FILE],
    "files": [_FILE],
    "include": (["str"], "null"),
    "exclude": (["str"], "null"),
    "validation": "object",
    "quantization": {  # --dtype int8 (format 4)
        "codes": "str", "scales": "str", "block": "count", "rounding": "str", "scale": "str",
        "error_budget": "number", "min_elements": "count", "quantized": "count",
        "kept_float16": [{"name": "str", "reason": "str"}],
    },
    # format 1
    "model_type_detected": "bool",
    "config_model_type": ("str", "null"),
    "architectures": (["str"], "null"),
    "weights_file": "str",
}

_WORDS = {"str": "a string", "int": "an integer", "count": "a non-negative integer", "number": "a number",
          "bool": "true or false", "null": "null", "object": "an object"}


def check_metadata(path: Path, metadata: Any) -> dict[str, Any]:
    """``metadata`` (parsed ``metadata.json``), refused unless it is an object whose known keys have
    their type (:data:`METADATA_TYPES`).

    Raises:
        FormatError: naming the first key of the wrong type and the type it must have.
    """
    if not isinstance(metadata, dict):
        raise FormatError(path, "metadata is not a JSON object")
    wrong = _wrong(metadata, METADATA_TYPES, "")
    if wrong is not None:
        key, kind = wrong
        raise FormatError(path, f"metadata key {key!r} must be {_describe(kind)}")
    return metadata


def _wrong(value: Any, kind: Any, key: str) -> tuple[str, Any] | None:
    """``(key, expected type)`` of the first place in ``value`` that is not ``kind``; None if none."""
    if isinstance(kind, tuple):
        found = [_wrong(value, k, key) for k in kind]
        if all(found):
            # An object of the right kind but a wrong member reports that member.
            return next((f for f, k in zip(found, kind, strict=True) if f and f[0] != key and _is(value, k)),
                        (key, kind))
        return None
    if isinstance(kind, list):
        if not isinstance(value, list):
            return key, kind
        return next((w for i, item in enumerate(value) if (w := _wrong(item, kind[0], f"{key}[{i}]"))), None)
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return key, kind
        return next((w for name, sub in kind.items() if name in value
                     and (w := _wrong(value[name], sub, f"{key}.{name}" if key else name))), None)
    return None if _is(value, kind) else (key, kind)


def _is(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the shape ``kind`` at its top level (lists and objects: their own type)."""
    if isinstance(kind, list):
        return isinstance(value, list)
    if isinstance(kind, dict) or kind == "object":
        return isinstance(value, dict)
    if isinstance(kind, tuple):
        return any(_is(value, k) for k in kind)
    if kind in ("int", "count"):
        return isinstance(value, int) and not isinstance(value, bool) and (kind == "int" or value >= 0)
    checks = {"str": str, "bool": bool, "null": type(None)}
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, checks[kind])


def _describe(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_describe(k) for k in kind)
    if isinstance(kind, list):
        return f"a list of {_describe(kind[0]).removeprefix('a ').removeprefix('an ')}s" if isinstance(kind[0], str) \
            else "a list of objects"
    if isinstance(kind, dict):
        return "an object"
    return _WORDS[kind]
