"""Progress bars: the one place that decides whether a bar is shown, and how it counts.

The command line asks for bars with :func:`wanted` (not ``-q``/``--json``, stderr a terminal); the
library shows one only when its caller passed ``progress=True``. Either way an environment
variable turns every bar off: ``STREAMCONV_DISABLE_PROGRESS_BARS=1``, or
``HF_HUB_DISABLE_PROGRESS_BARS=1`` as for huggingface_hub (whose ``utils/tqdm.py`` is the model).
Bars count bytes in MiB (the unit of every summary, see :func:`streamconv.units.format_bytes`),
tensors, or steps, and say which.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Literal

__all__ = ["DISABLE_VARIABLES", "Progress", "bar", "bars_disabled", "wanted"]

#: Each of these set to a true value (1, true, yes, on) hides every bar.
DISABLE_VARIABLES = ("STREAMCONV_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
_TRUE = {"1", "true", "yes", "on"}
_MIB = 1024 * 1024

Counts = Literal["bytes", "tensors", "steps"]


def bars_disabled() -> bool:
    """True when one of :data:`DISABLE_VARIABLES` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in DISABLE_VARIABLES)


def wanted(*, quiet: bool = False, stream: IO[str] | None = None) -> bool:
    """Whether the command line shows bars: not quiet, ``stream`` (stderr) a terminal, not disabled."""
    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        terminal = False
    return not quiet and terminal and not bars_disabled()


class Progress:
    """A bar, or nothing: every method does nothing when no bar is shown.

    ``update`` takes what the bar counts in its own terms (bytes for a byte bar, shown in MiB).
    """

    def __init__(self, tqdm_bar: Any = None, scale: float = 1.0) -> None:
        self.bar = tqdm_bar
        self.scale = scale

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def update(self, n: float = 1) -> None:
        if self.bar is not None:
            self.bar.update(n / self.scale)

    def say(self, text: str) -> None:
        """Show ``text`` as the bar's label (what it is doing now)."""
        if self.bar is not None:
            self.bar.set_description(text)

    def note(self, text: str) -> None:
        """Show ``text`` after the counts (what else is moving: the bytes fetched from the hub)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def reset(self) -> None:
        if self.bar is not None:
            self.bar.reset()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: float, counts: Counts, desc: str, *, enabled: bool, tqdm_class: Any = None,
        leave: bool = True) -> Progress:
    """A :class:`Progress` over ``total`` bytes, tensors or steps, labelled ``desc``, on stderr.

    Args:
        total: How many bytes (tensors, steps) the work holds.
        counts: What ``total`` and ``update`` count.
        desc: The label: what is being done (``converting``).
        enabled: The caller asked for a bar (``progress=True``, or :func:`wanted` in the CLI).
        tqdm_class: The tqdm class (``tqdm.auto.tqdm`` by default).
        leave: Keep the finished bar on screen.
    """
    if not enabled or bars_disabled():
        return Progress()
    if tqdm_class is None:
        from tqdm.auto import tqdm

        tqdm_class = tqdm
    if counts == "bytes":
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:,.1f}/{total:,.1f} MiB [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        made = tqdm_class(total=total / _MIB, unit="MiB", desc=desc, bar_format=fmt, file=sys.stderr, leave=leave)
        return Progress(made, _MIB)
    unit = {"tensors": "tensor", "steps": "step"}[counts]
    return Progress(tqdm_class(total=total, unit=unit, desc=desc, file=sys.stderr, leave=leave))
