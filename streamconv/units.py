"""Sizes in and out: one parser for size strings (CLI and Python API) and one way to print bytes.

A size is written as transformers' ``max_shard_size`` writes it, and as GNU ``dd`` does:

- ``5GB`` is 5 * 10**9 bytes (decimal: ``kB``/``KB``, ``MB``, ``GB``, ``TB``);
- ``5GiB`` is 5 * 2**30 bytes (binary: ``KiB``, ``MiB``, ``GiB``, ``TiB``);
- ``5G`` (a prefix alone, as ``dd`` and ``ulimit`` take it) is binary too, 5 * 2**30;
- a plain number is bytes.

A lowercase ``b`` after a prefix (``5Gb``) is refused: transformers reads it as bits, most people
mean bytes, so the user is asked to say which (``5GiB`` and ``5gib`` are bytes). Bytes are printed in binary units with the label
saying so (``86.6 MiB``), the unit of every progress bar and summary.
"""

from __future__ import annotations

import re
from typing import Any

from streamconv.errors import InvalidOptionError

__all__ = ["SIZE_HELP", "article", "format_bytes", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)(b?))?\s*$", re.IGNORECASE)
_BYTES_ONLY = re.compile(r"^\s*(\d+)\s*B\s*$")
_POWERS = "kmgt"

#: One sentence for help texts and error messages.
SIZE_HELP = "4MiB = 4*2^20 bytes, 4MB = 4*10^6 (as transformers' max_shard_size), 4M = 4MiB, 4194304 = bytes"


def parse_size(value: Any, name: str = "size") -> int:
    """Bytes from ``value``: an int, or a string such as ``4MiB``, ``16MB``, ``512k`` or ``1048576``.

    Args:
        value: The size.
        name: The option it was given for, named in the error (``chunk_size`` reads as
            ``--chunk-size`` on the command line).

    Raises:
        InvalidOptionError: not a size, a bool, bits (``5Gb``), or below 1 byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidOptionError(
            f"{{{name}=}} is {article(type(value).__name__)}; give a size in bytes or a string like 4MiB",
            name, **{name: value},
        )
    size = value if isinstance(value, int) else _parse_text(value, name)
    if size < 1:
        raise InvalidOptionError(f"{{{name}=}} must be at least 1 byte", name, **{name: value})
    return size


def _parse_text(text: str, name: str) -> int:
    bytes_only = _BYTES_ONLY.match(text)
    if bytes_only:
        return int(bytes_only.group(1))
    match = _SIZE.match(text)
    if not match:
        raise InvalidOptionError(f"{{{name}=}} is not a size; write it like {SIZE_HELP}", name, **{name: text})
    number, prefix, binary, suffix = match.groups()
    if prefix is None:
        if "." in number:
            raise InvalidOptionError(f"{{{name}=}} is not a whole number of bytes", name, **{name: text})
        return int(number)
    if suffix == "b" and not binary:  # 5Gb: bits to transformers; 5Gib can only mean bytes
        raise InvalidOptionError(
            f"{{{name}=}} reads as bits; write {number}{prefix.upper()}{binary}B for bytes", name, **{name: text}
        )
    power = _POWERS.index(prefix.lower()) + 1
    decimal = suffix == "B" and not binary
    return int(float(number) * (1000 if decimal else 1024) ** power)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, the label saying which: ``512 B``, ``1.5 KiB``, ``86.6 MiB``, ``2.1 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def article(word: str) -> str:
    """``an int``, ``a str``: the word with its indefinite article."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
