"""Start-up and exit: what the CLI costs beyond the conversion, and what each heavy dependency costs.

Three fresh processes per run, interleaved run by run on the same checkpoint (BERT-base; ``--quick``:
tiny BERT):

- *CLI*: ``python -m streamconv convert SRC -o OUT --force -q --type bert --workers 2``, wall time
  from outside (start to exit);
- *in process*: ``streamconv.convert(SRC, OUT, force=True, model_type="bert", workers=2)``, timed
  around the call alone (after the imports, before the exit);
- *imports*: a process that imports what the CLI's ``convert`` imports, as the CLI does (under
  ``program_start``), wall time: the interpreter and the imports, nothing parsed or converted.

CLI minus in process is what start-up and exit cost (target: at most 0.35 s); CLI minus in process
minus imports is what parsing the command line and the exit cost. Then each heavy dependency's
``import`` in a fresh process, timed around the import alone, after ``import numpy`` (numpy's own
row: alone), so a row is that module's cost; and whether the in-process float32 -> float16
conversion had imported it by its end.

Called by benchmarks/run.py (section ``startup``); alone: python benchmarks/startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from make_checkpoints import CHECKPOINTS, DEFAULT_WORKDIR, ensure

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.35
HEAVY = ("numpy", "pyarrow", "zstandard", "ml_dtypes", "tqdm", "huggingface_hub", "torch", "transformers")
IN_PROCESS = """\
import sys, time
from streamconv import convert
t = time.perf_counter()
convert(sys.argv[1], sys.argv[2], force=True, model_type="bert", workers=2)
print(time.perf_counter() - t)
print(",".join(m for m in sys.argv[3].split(",") if m in sys.modules))
"""
IMPORTS = """\
import streamconv.cli.app
from streamconv.cli.startup import program_start
with program_start(uses_blas=False):
    import streamconv.pipeline.convert
"""
IMPORT_ONE = "import time{pre}\nt = time.perf_counter()\nimport {name}\nprint(time.perf_counter() - t)\n"


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=_env(), check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _output(command: list[str]) -> list[str]:
    done = subprocess.run(command, env=_env(), check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout.splitlines()


def _side_by_side(source: Path, work: Path, runs: int) -> tuple[dict[str, list[float]], set[str]]:
    """The three processes, ``runs`` times each after one untimed round; seconds per run, and the
    heavy modules the in-process conversion had imported."""
    cli = [sys.executable, "-m", "streamconv", "convert", str(source), "-o", str(work / "cli-out"),
           "--force", "-q", "--type", "bert", "--workers", "2"]
    inproc = [sys.executable, "-c", IN_PROCESS, str(source), str(work / "in-out"), ",".join(HEAVY)]
    imports = [sys.executable, "-c", IMPORTS]
    times: dict[str, list[float]] = {"cli": [], "in": [], "imports": []}
    loaded: set[str] = set()
    for k in range(runs + 1):
        cli_s = _wall(cli)
        seconds, names = _output(inproc)
        imports_s = _wall(imports)
        loaded = set(filter(None, names.split(",")))
        if k:  # the first round warms the page cache and the imports
            times["cli"].append(cli_s)
            times["in"].append(float(seconds))
            times["imports"].append(imports_s)
    return times, loaded


def _import_seconds(name: str, runs: int) -> float | str:
    pre = "" if name == "numpy" else "\nimport numpy"
    try:
        return statistics.median(float(_output([sys.executable, "-c", IMPORT_ONE.format(pre=pre, name=name)])[0])
                                 for _ in range(runs))
    except subprocess.CalledProcessError:
        return "not installed"


def measure(workdir: Path, runs: int, quick: bool) -> list[str]:
    """Run both measurements; the markdown lines of the report's "Start-up" section."""
    checkpoint = CHECKPOINTS["tiny-bert" if quick else "bert-base"]
    source = ensure(checkpoint, workdir)
    work = workdir / "startup"
    work.mkdir(parents=True, exist_ok=True)
    times, loaded = _side_by_side(source, work, runs)
    cli, inproc, imports = (statistics.median(times[k]) for k in ("cli", "in", "imports"))
    extra = statistics.median(c - i for c, i in zip(times["cli"], times["in"], strict=True))
    rest = statistics.median(c - i - m for c, i, m in zip(times["cli"], times["in"], times["imports"], strict=True))
    spread = f"{min(times['cli']):.2f}–{max(times['cli']):.2f}"
    lines = [
        "## Start-up",
        "",
        f"{checkpoint.label}, float32 -> float16, medians of {runs} run(s), the three processes interleaved run by run",
        "(`benchmarks/startup.py`). *CLI* is the whole `python -m streamconv convert` process, timed from outside;",
        "*in process* is `streamconv.convert(...)` alone, timed inside a fresh process; *imports* is a process that",
        "only imports what `convert` imports. Start-up and exit = CLI minus in process, run by run.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| CLI, whole process | {cli:.3f} (min–max {spread}) |",
        f"| in process, the conversion alone | {inproc:.3f} |",
        f"| **start-up and exit** (CLI minus in process; target ≤ {TARGET_S}) | **{extra:.3f}** |",
        f"| of which: interpreter and imports (the imports-only process) | {imports:.3f} |",
        f"| of which: the rest (parsing, exit) | {rest:.3f} |",
        "",
        "`import X` in a fresh process, timed around the import alone, after `import numpy` (numpy's row: alone),",
        f"median of {runs}; *convert imports it*: loaded by the end of the in-process float32 -> float16 conversion.",
        "",
        "| module | import (s) | convert imports it |",
        "|---|---|---|",
    ]
    for name in HEAVY:
        seconds = _import_seconds(name, runs)
        cell = f"{seconds:.3f}" if isinstance(seconds, float) else seconds
        lines.append(f"| {name} | {cell} | {'yes' if name in loaded else 'no'} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each process (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny BERT instead of BERT-base")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkpoints and outputs")
    args = parser.parse_args()
    print("\n".join(measure(args.workdir, args.runs, args.quick)))


if __name__ == "__main__":
    main()
