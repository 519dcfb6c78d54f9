"""Start-up choices only a program that owns its process makes.

:func:`streamconv.cli.main` applies them when it is the program (``streamconv``, ``python -m
streamconv``: called without ``argv``), never when code runs ``main([...])`` inside a process
that is not streamconv's. Together they save ~70 ms of CPU per run on a 2-core machine (start-up
and exit of ``convert``: 0.24 s -> 0.17 s), spent before the first tensor or at exit.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator

__all__ = ["program_start"]


@contextlib.contextmanager
def program_start(uses_blas: bool) -> Iterator[None]:
    """Run the block (the command's imports) as a program's start-up.

    - numpy's OpenBLAS starts a helper thread per extra core when numpy is imported, which
      busy-waits for work no command but ``validate`` gives it (~45 ms of CPU here, taken from
      our own threads on 2 cores): ``OPENBLAS_NUM_THREADS=1`` unless the user chose, or the
      command uses BLAS.
    - The imports create ~30,000 objects that live until exit; the garbage collector ran ~65
      passes over them while importing and a full one at exit (~30 ms together). It is off
      while the block runs, then those objects are frozen out of its passes (``gc.freeze``);
      cycles made later are collected as usual.

    Args:
        uses_blas: The command does linear algebra (validation runs the model).
    """
    if not uses_blas and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.freeze()
            gc.enable()
