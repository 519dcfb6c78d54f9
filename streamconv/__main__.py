"""``python -m streamconv`` and the ``streamconv`` command: the CLI, with a Ctrl-C or SIGTERM while
it starts caught like any other.

Importing the CLI takes ~50-100 ms (argparse, the command table), before
:func:`streamconv.cli.main` can catch anything: an interrupt then is caught here, and is one line,
never a traceback. This module imports nothing of streamconv before its handlers are in place.
"""

import os
import signal
import sys


class _Terminated(KeyboardInterrupt):
    """SIGTERM while the CLI is imported."""


def _raise(signum: int, frame: object) -> None:
    raise _Terminated


def run() -> int:
    """The program: import the CLI, then run :func:`streamconv.cli.main`; returns the exit code."""
    term_default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if term_default:
        signal.signal(signal.SIGTERM, _raise)
    try:
        from streamconv.cli.app import main
        from streamconv.cli.interrupts import raise_terminated

        if term_default:  # from here on, SIGTERM raises the CLI's own Terminated (exit 143, its line)
            signal.signal(signal.SIGTERM, raise_terminated)
    except KeyboardInterrupt as exc:  # still importing: nothing was read or written
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, _Terminated) else ("interrupted", 130)
        sys.stderr.write(f"error: {how}; nothing was written\n")
        return code
    code = main()
    if code in (130, 143):
        # Interrupted: the run has cleaned up and said so. The interpreter's exit would join the
        # worker threads, and one that an interrupt left waiting on a cut Condition never returns.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(run())
