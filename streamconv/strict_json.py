"""JSON read as serde_json (safetensors' parser) reads it, and no duplicate key.

Every JSON file streamconv parses, and every safetensors header, goes through :func:`strict_json_loads`:
no ``NaN``, no number beyond a float's range, no lone surrogate, no key given twice in one object,
at most :data:`MAX_JSON_DEPTH` levels. Python's ``json`` accepts each of these; safetensors and
other readers of the same files would not, or would read another value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from streamconv.messages import quote

__all__ = ["MAX_JSON_DEPTH", "JSONRefused", "strict_json_loads"]

#: serde_json's recursion limit is 128 and the level that reaches it fails; safetensors headers are
#: parsed by it, so every JSON file is held to the same limit.
MAX_JSON_DEPTH = 127


class JSONRefused(ValueError):
    """JSON that serde_json would refuse, or that holds a duplicate key; the message says why."""


_U64 = 2**64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse(what: str) -> Any:
    raise JSONRefused(what)


def _parse_int(text: str) -> int | float:
    # serde_json reads "-0" as the float -0.0 and an integer beyond 64 bits as a float.
    if text == "-0":
        return -0.0
    if len(text) <= 21:
        value = int(text)
        if -(2**63) <= value < _U64:
            return value
    approx = float(text)  # float(), unlike int(), takes any number of digits
    return _refuse(f"number {text[:30]}... is out of range") if math.isinf(approx) else approx


def _parse_float(text: str) -> float:
    value = float(text)
    return _refuse(f"number {text[:30]} is out of range") if math.isinf(value) else value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _refuse(f"duplicate key {quote(key)} (a key may appear once per object)")
            seen.add(key)
    return result


def strict_json_loads(text: str) -> Any:
    """Parse JSON as serde_json does, and refuse duplicate keys.

    Raises:
        JSONRefused: for anything serde_json refuses (NaN, ``1e400``, lone surrogates, nesting
            deeper than :data:`MAX_JSON_DEPTH`, ...), malformed JSON, and a key given twice in one object.
    """
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=lambda name: _refuse(f"{name} is not a JSON number"),
        )
    except json.JSONDecodeError as exc:
        raise JSONRefused(str(exc)) from None
    except RecursionError:
        raise JSONRefused(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Refuse nesting deeper than serde_json's limit and strings holding a lone surrogate."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise JSONRefused(f"string {quote(node)} holds a lone UTF-16 surrogate escape")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise JSONRefused(f"nested more than {MAX_JSON_DEPTH} levels deep")
        items = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        stack.extend((item, depth + 1) for item in items)
