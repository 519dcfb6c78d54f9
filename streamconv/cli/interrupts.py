"""Interrupts in the CLI: SIGTERM raised like Ctrl-C, signals held during start-up, and a true line.

SIGTERM raises like Ctrl-C, so the same clean-up runs (the staging folder is removed, an old output
stays), and exits 128 + 15 = 143 as a process killed by SIGTERM does by shell convention, so
supervisors (systemd, Kubernetes, `timeout`) see what ended it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

__all__ = ["SIGINT_EXIT", "SIGTERM_EXIT", "Terminated", "interrupt_line", "interrupts_held", "output_identity",
           "sigterm_raises"]

SIGINT_EXIT = 130
SIGTERM_EXIT = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised by the handler :func:`sigterm_raises` installs."""


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Make SIGTERM raise :class:`Terminated` while the block runs (main thread; an ignored SIGTERM stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; one that came is raised when it ends.

    numpy, interrupted while importing, prints a traceback of its own and raises ImportError
    instead of KeyboardInterrupt; held, the interrupt comes after the import (at most ~0.3 s late)
    and gives the usual one line.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def output_identity(args: argparse.Namespace | None) -> tuple[int, int] | None:
    """(device, inode) of ``convert``'s output name now, None if nothing is there."""
    if args is None or args.command != "convert" or not args.output:
        return None
    try:
        st = os.lstat(os.path.expanduser(args.output))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def interrupt_line(args: argparse.Namespace | None, before: tuple[int, int] | None, exc: BaseException) -> str:
    """The one line for an interrupt, saying truly what the output name holds now.

    It compares the output name's inode now with the one before the conversion: the new output
    (and an atomic --force exchange) brings another inode under the name, an untouched old
    output keeps its own.
    """
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    if args is None or args.command != "convert" or not args.output or getattr(args, "dry_run", False):
        return f"error: {how}; nothing was written"
    now, output = output_identity(args), args.output
    if now is None:
        state = f"nothing was written under {output}" if before is None else f"nothing is under {output} now"
    elif now == before:
        state = f"{output} still holds the old output, unchanged"
    else:
        state = f"{output} holds the new output, complete"
    return f"error: {how}; {state}"
