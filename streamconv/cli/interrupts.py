"""Interrupts in the CLI: SIGTERM raised like Ctrl-C, signals held during start-up, and a true line.

SIGTERM raises like Ctrl-C, so the same clean-up runs (the staging folder is removed, an old output
stays), and exits 128 + 15 = 143 as a process killed by SIGTERM does by shell convention, so
supervisors (systemd, Kubernetes, `timeout`) see what ended it.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

__all__ = ["REDELIVERY_DELAY", "SIGINT_EXIT", "SIGTERM_EXIT", "Terminated", "interrupt_line", "interrupts_held",
           "output_identity", "raise_terminated", "redeliver_swallowed", "settle", "sigterm_raises"]

SIGINT_EXIT = 130
SIGTERM_EXIT = 143
#: Seconds after which a swallowed interrupt comes again (see :func:`redeliver_swallowed`).
REDELIVERY_DELAY = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised by the handler :func:`sigterm_raises` installs."""


def raise_terminated(signum: int, frame: Any) -> NoReturn:
    """The SIGTERM handler: raise :class:`Terminated` (installed by :func:`sigterm_raises`, or by
    ``python -m streamconv`` for the whole run)."""
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Make SIGTERM raise :class:`Terminated` while the block runs (main thread; an ignored SIGTERM stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        # Only its own handler is undone: one :func:`settle` put there stays.
        if previous == signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is raise_terminated:
            signal.signal(signal.SIGTERM, previous)


def redeliver_swallowed() -> None:
    """Make an interrupt Python would swallow come again (the program's start; main thread).

    A signal handler runs wherever the main thread is, and that can be a weakref callback or a
    ``__del__``, whose exceptions Python cannot raise: it prints "Exception ignored in ..." with a
    traceback and goes on, and the run would finish as if the signal never came. The hook has the
    signal come again instead, :data:`REDELIVERY_DELAY` later from a timer thread (sent from the
    hook itself, its handler would run inside the hook and be swallowed again), to be raised at
    the main thread's next line.
    Other unraisable exceptions go to the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        # A moment later, so that the hook has returned (a thread that sent it at once could have it
        # raised inside Thread.start, still in the hook).
        again = threading.Timer(REDELIVERY_DELAY, _thread.interrupt_main, (signum,))
        again.daemon = True
        with contextlib.suppress(RuntimeError):  # no new thread while the interpreter exits
            again.start()

    sys.unraisablehook = hook


def settle() -> None:
    """Ignore SIGINT and SIGTERM from now on: the program's outcome is known and it is about to exit.

    Called by the program (never by ``main([...])`` inside another's process) once the command has
    returned or its error line is about to be printed: a Ctrl-C then, or a second one while the first
    is reported, would otherwise end in a traceback from the interpreter's exit, or cut the line.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def output_identity(target: str | None) -> tuple[int, int] | None:
    """(device, inode) of the folder name ``target`` now (the folder a command writes), None if nothing is there."""
    if not target:
        return None
    try:
        st = os.lstat(os.path.expanduser(target))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def interrupt_line(exc: BaseException, target: str | None = None, before: tuple[int, int] | None = None,
                   stopped: str | None = None) -> str:
    """The one line for an interrupt, saying truly what the command's folder holds now.

    Args:
        exc: The interrupt (:class:`Terminated` for SIGTERM).
        target: The folder the command was writing (``convert -o``, ``export --to``), if any.
        before: :func:`output_identity` of ``target`` before the command ran.
        stopped: What was stopped, for a command that writes nothing (``streamconv validate OUT``).

    It compares the target's inode now with the one before: the new output (and an atomic
    --force exchange) brings another inode under the name, an untouched old output keeps its own.
    """
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    if not target:
        return f"error: {how}; {stopped} stopped, nothing was written" if stopped else f"error: {how}; nothing was written"
    now = output_identity(target)
    if now is None:
        state = f"nothing was written under {target}" if before is None else f"nothing is under {target} now"
    elif now == before:
        state = f"{target} still holds the old output, unchanged"
    else:
        state = f"{target} holds the new output, complete"
    return f"error: {how}; {state}"
