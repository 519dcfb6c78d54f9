"""The output folder: built under a temporary name beside it, moved into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from streamconv.errors import InvalidOptionError, OutputExistsError, OutputNotWritableError

__all__ = ["check_output", "staged_output"]


def check_output(output: Path, source_root: Path, force: bool) -> None:
    """Refuse an output that exists (unless ``force``) or that would overwrite the source.

    Raises:
        OutputExistsError: ``output`` exists and ``force`` is false.
        InvalidOptionError: ``output`` is the source folder, inside it holding it, or holds it.
    """
    out, src = output.resolve(), source_root.resolve()
    if out == src or src.is_relative_to(out):
        raise InvalidOptionError(
            f"{output}: the output would replace the checkpoint being converted; choose another -o"
        )
    if output.exists() or output.is_symlink():
        if not force:
            raise OutputExistsError(output)


@contextlib.contextmanager
def staged_output(output: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``output``; on success move it to ``output``.

    On any error (or interrupt) the temporary folder is removed and ``output`` is left as it was.
    With ``force`` an existing ``output`` is replaced only after the new one is complete.

    Raises:
        OutputNotWritableError: the parent folder cannot be created or written.
    """
    parent = output.parent
    staging = parent / f".{output.name}.streamconv-incomplete-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise OutputNotWritableError(output, exc.strerror or str(exc)) from exc
    try:
        yield staging
        _replace(staging, output, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, output: Path, force: bool) -> None:
    if not (output.exists() or output.is_symlink()):
        os.rename(staging, output)
        return
    if not force:  # appeared while we were converting
        raise OutputExistsError(output)
    old = output.parent / f".{output.name}.streamconv-old-{os.getpid()}"
    os.rename(output, old)
    os.rename(staging, output)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
