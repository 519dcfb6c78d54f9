"""The name-level stages: keep and rename lazy tensor handles; nothing is read.

``select`` keeps the tensors whose name matches glob patterns, ``rename`` applies a table of
``(regex, replacement)`` rules. Plans are built from these, and generator-API callers compose them
with :func:`~streamconv.stages.pieces.chunk` and :func:`~streamconv.stages.pieces.cast`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence

from streamconv.errors import PlanError
from streamconv.sources.ref import TensorRef

__all__ = ["RenameRule", "matches_any", "rename", "select"]

#: A rename rule: a regular expression and its replacement, as for :func:`re.sub`.
RenameRule = tuple[str, str]


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches one of the shell-style glob ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select(
    refs: Iterable[TensorRef],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Iterator[TensorRef]:
    """Keep the tensors whose name matches ``include`` (all if empty) and not ``exclude``.

    Args:
        refs: Tensor handles.
        include: Glob patterns (``*``, ``?``, ``[...]``); a tensor is kept if one matches.
        exclude: Glob patterns; a tensor matching one is dropped, even if included.

    Returns:
        The kept handles, in order.

    Example:
        >>> names = [r.name for r in select(refs, include=["encoder.*"], exclude=["*.bias"])]
    """
    for ref in refs:
        if include and not matches_any(ref.name, include):
            continue
        if exclude and matches_any(ref.name, exclude):
            continue
        yield ref


def rename(refs: Iterable[TensorRef], rules: Sequence[RenameRule]) -> Iterator[TensorRef]:
    """Rename tensors with a table of ``(regex, replacement)`` rules, applied in order.

    Every rule is applied to the result of the previous one (``re.sub``), so a table can strip a
    prefix and then rename a leaf. The source name is kept on the handle.

    Args:
        refs: Tensor handles.
        rules: The table.

    Returns:
        The renamed handles, in order.

    Raises:
        PlanError: if two tensors end up with the same name.

    Example:
        >>> rules = [(r"^model\\.encoder\\.", ""), (r"embed_positions", "position_embedding")]
        >>> [r.name for r in rename(refs, rules)]
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    seen: dict[str, str] = {}
    for ref in refs:
        name = ref.name
        for pattern, replacement in compiled:
            name = pattern.sub(replacement, name)
        if name in seen:
            raise PlanError(
                f"renaming maps both {seen[name]!r} and {ref.source_name!r} to {name!r}; "
                "exclude one of them or fix the rename table"
            )
        seen[name] = ref.source_name
        yield ref if name == ref.name else ref.renamed(name)
