"""``python -m tests.stop_at SIGNAL STEP[,STEP...] -- ARGS``: ``streamconv ARGS`` that signals itself at a named step.

A step is ``before:DOTTED.NAME`` or ``after:DOTTED.NAME``, the function or method a run calls
(``before:streamconv.format.staging._exchange``, ``after:os.unlink``). The steps are met in the order
given: the first is watched from the start, each next one once the one before it was met, and at
the last the process sends itself SIGNAL (``KILL``, ``INT``, ``TERM``). So a test stops a run at
a point of its choosing, the same on every run and machine, instead of after a guessed sleep.

Prints nothing of its own; the command runs as ``python -m streamconv ARGS`` would (``main()``
without argv, so it starts as the program).
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from typing import Any


def resolve(dotted: str) -> tuple[Any, str]:
    """The object that holds ``dotted``'s last name (a module or a class), and that name."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise SystemExit(f"stop_at: cannot find {dotted}")


def arm(steps: list[str], signum: int) -> None:
    """Wrap each step's function; the wrappers count the steps met and signal at the last."""
    met = [0]

    def reached(index: int) -> None:
        if met[0] == index:
            met[0] += 1
            if met[0] == len(steps):
                os.kill(os.getpid(), signum)

    for index, step in enumerate(steps):
        when, _, dotted = step.partition(":")
        if when not in ("before", "after"):
            raise SystemExit(f"stop_at: {step}: say before: or after:")
        owner, name = resolve(dotted)
        original = getattr(owner, name)

        def wrapper(*args: Any, _original: Any = original, _index: int = index, _when: str = when, **kwargs: Any) -> Any:
            if _when == "before":
                reached(_index)
            result = _original(*args, **kwargs)
            if _when == "after":
                reached(_index)
            return result

        setattr(owner, name, functools.wraps(original)(wrapper))


def main() -> None:
    signame, steps, dashes, *args = sys.argv[1:]
    assert dashes == "--", "usage: python -m tests.stop_at SIGNAL STEP[,STEP...] -- ARGS"
    arm(steps.split(","), getattr(signal, f"SIG{signame}"))
    from streamconv.cli import main as streamconv

    sys.argv = ["streamconv", *args]
    raise SystemExit(streamconv())


if __name__ == "__main__":
    main()
