"""How error messages are written: options named through placeholders, and text kept on one line.

A message template names an option as ``{name}``, ``{name=}`` (with the value the error carries)
or ``{name=text}`` (with a literal value); ``{{`` and ``}}`` are braces of the text. A Python caller
reads ``force=True`` (:func:`python_label`); the CLI renders the same template with its flags
(``--force``). See :class:`streamconv.errors.InvalidOptionError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["NOVALUE", "escape", "one_line", "python_label", "quote", "render"]

#: Marks an option mentioned without a value.
NOVALUE: Any = object()
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)(=([^}]*))?\}")
_LITERALS: dict[str, Any] = {"True": True, "False": False, "None": None}


def render(template: str, values: dict[str, Any], label: Callable[[str, Any], str]) -> str:
    """``template`` with each option written by ``label(name, value_or_NOVALUE)``."""

    def replace(match: re.Match[str]) -> str:
        name, has_value, literal = match.group(1), match.group(2), match.group(3)
        if name is None:  # {{ or }}: a brace of the text
            return match.group(0)[0]
        if not has_value:
            return label(name, NOVALUE)
        if literal:
            return label(name, _LITERALS.get(literal, literal))
        return label(name, values.get(name))

    return _PLACEHOLDER.sub(replace, template)


def python_label(name: str, value: Any) -> str:
    """How a Python caller reads an option in a message: ``level`` or ``level=5``."""
    return name if value is NOVALUE else f"{name}={value!r}"


def one_line(text: str) -> str:
    """``text`` with each run of whitespace (the newlines of Arrow's and zstd's messages) made one space."""
    return " ".join(str(text).split())


def escape(text: str) -> str:
    """``text`` put into a template as it is: its braces are doubled, so none reads as a placeholder."""
    return text.replace("{", "{{").replace("}", "}}")


def quote(text: str, limit: int = 80) -> str:
    """``repr`` of a name from a file, cut short: one line, whatever the name holds."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


# --- paths from data ---
