"""The output folder: built under a temporary name beside it, moved into place only when complete.

What a reader of ``OUTPUT`` can rely on (docs/reliability.md, "Atomicity", lists each with its test):

- the output is written under ``.OUTPUT.streamconv-incomplete-PID`` and takes the output name in
  one rename, so the name never holds a partial output, whatever kills the process;
- ``--force`` replaces only what streamconv wrote: an empty folder, or an output of the same
  command (its marker file lists every file in it); anything else is refused (:func:`check_output`);
- ``--force`` swaps the new output with the old one in one step where the OS has one (Linux
  ``renameat2(RENAME_EXCHANGE)``), so the name holds the old or the new output at every instant;
- folders left by killed runs (their PID no longer alive) are removed by the next run on the
  same output, which says so;
- a full disk (or quota, or file-size limit) is a :class:`DiskFullError` naming the output and
  the space needed, with the partial output removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from streamconv.errors import (
    DiskFullError,
    InvalidOptionError,
    OutputExistsError,
    OutputNotWritableError,
    OutputRefusedError,
)
from streamconv.format.ownership import contents_refusal, place_refusal
from streamconv.messages import escape

__all__ = ["check_output", "clean_leftovers", "find_leftovers", "output_path", "staged_output", "staging_path"]

log = logging.getLogger(__name__)

STAGING_TAG = "streamconv-incomplete"
OLD_TAG = "streamconv-old"  # only the fallback replacement (no atomic exchange) uses this name
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})

# renameat2(2) flags and the syscall's number where glibc lacks the wrapper (glibc < 2.28).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "i686": 353, "i386": 353,
                  "armv7l": 382, "ppc64le": 357, "ppc64": 357, "s390x": 347}
# The kernel or the filesystem has no exchange (EINVAL: e.g. some FUSE/NFS, ENOSYS: kernel < 3.15,
# EPERM: a seccomp filter): replace in two renames instead. A real permission problem is then
# reported by those renames.
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP})


def output_path(value: str | os.PathLike[str], option: str = "output") -> Path:
    """The output folder ``value`` names (``~`` expanded); ``option`` is the argument it came as.

    Raises:
        InvalidOptionError: ``value`` is empty (``Path("")`` would be the working directory).
    """
    if not os.fspath(value).strip():
        raise InvalidOptionError(f"{{{option}}} is empty; name the folder to create", option)
    return Path(value).expanduser()


def check_output(output: Path, reads: Mapping[str, Path], force: bool, option: str = "output",
                 kind: str = "convert") -> None:
    """Refuse an output that cannot be made, that is not streamconv's to replace, or that exists
    (unless ``force``). Every command that writes a folder (convert, its dry run, export) asks here.

    What ``force`` may replace: an empty folder, or a folder this kind of command wrote (recognised by
    its marker: ``metadata.json`` for ``convert``, ``streamconv_export.json`` for ``export``) holding
    nothing but the files that marker lists. Anything else is refused, force or not: a symlink, a
    file, a FIFO or device, a folder holding anything else; the current folder or a folder above it;
    a folder the run reads, one holding it, or an existing one inside it. A missing name is accepted.

    Args:
        output: The folder to write.
        reads: The folders the run reads, by what they are (``{"the source checkpoint": root}``): the
            output may not be one of them, hold one, or (when it exists) lie inside one.
        force: Replace an existing output that is streamconv's own.
        option: The argument that named ``output`` (``target`` for export), for the messages.
        kind: ``convert`` or ``export``: which marker makes a folder streamconv's own.

    Raises:
        InvalidOptionError: a folder above ``output`` is a file.
        OutputRefusedError: ``output`` holds something streamconv did not write, or is read by the run.
        OutputExistsError: ``output`` is streamconv's own (or an empty folder) and ``force`` is false.
    """
    for parent in output.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InvalidOptionError(
                    f"cannot be created: {escape(repr(str(parent)))} is a file, not a folder; "
                    f"choose another {{{option}}}", option, where=output,
                )
            break
    where = place_refusal(output, reads)
    if where is not None:
        raise OutputRefusedError(output, where, option, removable=False)
    what = contents_refusal(output, kind)
    if what is not None:
        raise OutputRefusedError(output, what, option)
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputExistsError(output)


def staging_path(output: Path, pid: int | None = None, tag: str = STAGING_TAG) -> Path:
    """The hidden name beside ``output`` under which process ``pid`` (default: this one) builds it."""
    return output.parent / f".{output.name}.{tag}-{os.getpid() if pid is None else pid}"


@contextlib.contextmanager
def staged_output(output: Path, force: bool, expected_bytes: int = 0, option: str = "output",
                  kind: str = "convert") -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``output``; on success move it to ``output``.

    On any error (or interrupt) the temporary folder is removed and ``output`` is left as it was.
    With ``force`` an existing ``output`` is replaced only after the new one is complete, and
    atomically where the OS allows (see :func:`_replace`).

    Args:
        output: The output folder.
        force: Replace an existing ``output``.
        expected_bytes: About how many bytes the output will take, for the disk-full message.
        option: The argument that named ``output`` (``target`` for export), for the messages.
        kind: ``convert`` or ``export``: what ``force`` may replace (see :func:`check_output`),
            checked again just before the replacement.

    Raises:
        OutputRefusedError: what appeared at ``output`` meanwhile is not streamconv's to replace.
        OutputNotWritableError: the parent folder cannot be created or written.
        DiskFullError: no space, quota or file-size limit (ENOSPC, EDQUOT, EFBIG) while writing.
    """
    parent = output.parent
    staging = staging_path(output)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove(staging)  # our PID's, so left by a dead process that had it before us
        staging.mkdir()
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, output, expected_bytes, option) from exc
        raise OutputNotWritableError(output, exc.strerror or str(exc), option) from exc
    try:
        yield staging
        _replace(staging, output, force, option, kind)
    except BaseException as exc:
        # Also after the exchange, when the staging name holds the old output being removed.
        _remove(staging, ignore_errors=True)
        full = _disk_full_errno(exc)
        if full is not None:
            raise _disk_full(full, output, expected_bytes, option) from exc
        raise


def _replace(staging: Path, output: Path, force: bool, option: str = "output", kind: str = "convert") -> None:
    """Move the complete ``staging`` folder to ``output``, replacing it with ``force``."""
    if not (output.exists() or output.is_symlink()):
        os.rename(staging, output)
        return
    if not force:  # appeared while we were converting
        raise OutputExistsError(output)
    what = contents_refusal(output, kind)  # checked again: files may have been put there meanwhile
    if what is not None:
        raise OutputRefusedError(output, what, option)
    if _exchange(staging, output):
        # One step: the output name goes from the old output to the new one, and the old one now
        # sits under the staging name. Removing it is the last step; a kill during the removal
        # leaves a folder under our staging name, which no reader takes for an output and which
        # the next run on this output removes (clean_leftovers), as huggingface_hub's
        # _download_to_tmp_and_move leaves only an .incomplete file behind, never a broken file.
        _remove(staging)
        return
    # Fallback (no exchange on this OS or filesystem): rename the old output aside, then the new
    # one in. Between the two renames (microseconds) the output name is empty; a SIGKILL there
    # leaves the old output under .OUTPUT.streamconv-old-PID (removed by the next run). An
    # exception or interrupt there puts the old output back. docs/reliability.md says the same.
    old = staging_path(output, tag=OLD_TAG)
    _remove(old)
    os.rename(output, old)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(old, output)
        raise
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns:
        True once swapped; False when this OS, kernel or filesystem has no atomic exchange.

    Raises:
        OSError: the exchange is supported but failed (permissions, a path missing...).
    """
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _renameat2() -> Any:
    """libc's ``renameat2``, or the raw syscall where libc lacks it; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    args = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes, fn.restype = args, ctypes.c_int
        return fn
    number = _SYS_RENAMEAT2.get(platform.machine())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.argtypes, syscall.restype = [ctypes.c_long, *args], ctypes.c_long
    return lambda *a: syscall(number, *a)


def clean_leftovers(output: Path) -> list[Path]:
    """Remove the staging and old folders that runs on ``output`` left when they were killed.

    They are the folders :func:`find_leftovers` lists.

    Returns:
        The paths removed (also logged).
    """
    removed = []
    for path in find_leftovers(output):
        _remove(path)
        removed.append(path)
        log.info("removed %s, left by an interrupted streamconv run", path)
    return removed


def find_leftovers(output: Path) -> list[Path]:
    """The staging and old folders that killed runs on ``output`` left, to remove (nothing is removed).

    A leftover is ``.NAME.streamconv-incomplete-PID`` or ``.NAME.streamconv-old-PID`` beside
    ``output`` whose process PID is gone (``os.kill(pid, 0)`` raises ``ProcessLookupError``), or is
    this process (a dead process had our PID before us).
    PID reuse: if PID now belongs to another, live process the folder is kept, because that
    cannot be told apart from a live run; a later run removes it once that process has ended.
    Runs on other machines or in other PID namespaces writing the same folder are not detected.
    """
    prefix = f".{output.name}."
    pattern = re.compile(rf"(?:{STAGING_TAG}|{OLD_TAG})-([0-9]+)")
    try:
        entries = [e for e in os.scandir(output.parent) if e.name.startswith(prefix)]
    except OSError:  # no parent folder yet, or not readable: then nothing of ours is there
        return []
    found = []
    for entry in sorted(entries, key=lambda e: e.name):
        match = pattern.fullmatch(entry.name[len(prefix):])
        if match is not None and not _alive(int(match.group(1))):
            found.append(Path(entry.path))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    if pid <= 0:  # os.kill(0, ...) would mean our process group; no run ever has such a PID
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, OSError):
        return False
    return True


def _remove(path: Path, ignore_errors: bool = False) -> None:
    """Remove ``path`` whether it is a folder, a file or a symlink (never following it)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def _disk_full_errno(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT/EFBIG error in ``exc`` or what it was raised from, if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OSError) and not isinstance(seen, DiskFullError) and seen.errno in DISK_FULL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _disk_full(exc: OSError, output: Path, expected_bytes: int, option: str) -> DiskFullError:
    try:
        free = shutil.disk_usage(output.parent).free
    except OSError:
        free = 0
    reason = {errno.EFBIG: "a file grew beyond the file-size limit"}.get(exc.errno or 0)
    return DiskFullError(output, expected_bytes, free, exc.errno or errno.ENOSPC,
                         reason or os.strerror(exc.errno or errno.ENOSPC).lower(), option)
