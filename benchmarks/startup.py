"""Start-up and exit: what the CLI costs beyond the conversion, and what each heavy dependency costs.

Three fresh processes per run, interleaved run by run on the same checkpoint (BERT-base; ``--quick``:
tiny BERT):

- *CLI*: ``streamconv convert SRC -o OUT --force -q --type bert --workers 2``, the console script
  of a fresh install (benchmarks/fresh_env.py), wall time from outside (start to exit);
- *in process*: ``streamconv.convert(SRC, OUT, force=True, model_type="bert", workers=2)``, timed
  around the call alone (after the imports, before the exit);
- *imports*: a process that imports what the CLI's ``convert`` imports, as the CLI does (under
  ``program_start``), wall time: the interpreter and the imports, nothing parsed or converted.

CLI minus in process is what start-up and exit cost (target: at most 0.35 s), CLI ÷ in process the
same as a ratio; CLI minus in process minus imports is what parsing the command line and the exit cost.
All three run in the fresh install's venv, as a user's would.
The load average before and after is printed beside the figures. Then each heavy dependency's
``import`` in a fresh process, timed around the import alone, after ``import numpy`` (numpy's own
row: alone), so a row is that module's cost, also as a multiple of the in-process conversion; and
whether the in-process float32 -> float16 conversion had imported it by its end. A module the fresh
install lacks (torch, transformers: optional) is timed in `.venv`, and its row says so.

Called by benchmarks/run.py (section ``startup``); alone: python benchmarks/startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fresh_env
from make_checkpoints import CHECKPOINTS, DEFAULT_WORKDIR, ensure

TARGET_S = 0.35
#: make bench's runs for this section at least: a round is three processes of about a second.
MIN_RUNS = 7
HEAVY = ("numpy", "pyarrow", "zstandard", "ml_dtypes", "tqdm", "huggingface_hub", "torch", "transformers")
IN_PROCESS = """\
import sys, time
from streamconv import convert
t, cpu = time.perf_counter(), time.process_time()
convert(sys.argv[1], sys.argv[2], force=True, model_type="bert", workers=2)
print(time.perf_counter() - t, time.process_time() - cpu)
print(",".join(m for m in sys.argv[3].split(",") if m in sys.modules))
"""
IMPORTS = """\
import streamconv.cli.app
from streamconv.cli.startup import program_start
with program_start(uses_blas=False):
    import streamconv.pipeline.convert
"""
IMPORT_ONE = "import time{pre}\nt = time.perf_counter()\nimport {name}\nprint(time.perf_counter() - t)\n"


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process, start to exit."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    # cwd "/": `python -c` puts the working directory first on its path, and the checkout must not be
    subprocess.run(command, env=fresh_env.environment(), check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _output(command: list[str]) -> list[str]:
    done = subprocess.run(command, env=fresh_env.environment(), check=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd="/")
    return done.stdout.splitlines()


def _side_by_side(source: Path, work: Path, runs: int) -> tuple[dict[str, list[tuple[float, float]]], set[str]]:
    """The three processes, ``runs`` times each after one untimed round; (wall, CPU) seconds per
    run, and the heavy modules the in-process conversion had imported."""
    python = fresh_env.python()
    cli = [*fresh_env.streamconv(), "convert", str(source), "-o", str(work / "cli-out"),
           "--force", "-q", "--type", "bert", "--workers", "2"]
    inproc = [python, "-c", IN_PROCESS, str(source), str(work / "in-out"), ",".join(HEAVY)]
    imports = [python, "-c", IMPORTS]
    times: dict[str, list[tuple[float, float]]] = {"cli": [], "in": [], "imports": []}
    loaded: set[str] = set()
    for k in range(runs + 1):
        cli_s = _timed(cli)
        seconds, names = _output(inproc)
        imports_s = _timed(imports)
        loaded = set(filter(None, names.split(",")))
        if k:  # the first round warms the page cache and the imports
            times["cli"].append(cli_s)
            times["in"].append((float(seconds.split()[0]), float(seconds.split()[1])))
            times["imports"].append(imports_s)
    return times, loaded


def _import_seconds(name: str, runs: int) -> tuple[float | str, str]:
    """Median seconds of ``import name`` and where: the fresh install, else `.venv`."""
    pre = "" if name == "numpy" else "\nimport numpy"
    for python, where in ((fresh_env.python(), "fresh install"), (sys.executable, "`.venv` (not in a fresh install)")):
        try:
            return statistics.median(float(_output([python, "-c", IMPORT_ONE.format(pre=pre, name=name)])[0])
                                     for _ in range(runs)), where
        except subprocess.CalledProcessError:
            continue
    return "not installed", ""


def measure(workdir: Path, runs: int, quick: bool) -> tuple[list[str], list[list[str]]]:
    """Run both measurements; the markdown lines of the report's "Start-up" section, and its row of
    the targets table."""
    checkpoint = CHECKPOINTS["tiny-bert" if quick else "bert-base"]
    source = ensure(checkpoint, workdir)
    work = workdir / "startup"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    times, loaded = _side_by_side(source, work, runs)
    imported = {name: _import_seconds(name, runs) for name in HEAVY}
    load_after = os.getloadavg()[0]

    def cell(rows: list[tuple[float, ...]], bold: bool = False) -> str:
        wall, cpu = (statistics.median(r[n] for r in rows) for n in (0, 1))
        return f"**{wall:.3f}** | **{cpu:.3f}**" if bold else f"{wall:.3f} | {cpu:.3f}"

    pairs = list(zip(times["cli"], times["in"], times["imports"], strict=True))
    extra = [(c[0] - i[0], c[1] - i[1]) for c, i, _ in pairs]
    rest = [(c[0] - i[0] - m[0], c[1] - i[1] - m[1]) for c, i, m in pairs]
    walls = [c[0] for c in times["cli"]]
    conversion = statistics.median(r[0] for r in times["in"])
    ratio = statistics.median(c[0] / i[0] for c, i, _ in pairs)
    lines = [
        "## Start-up",
        "",
        f"{checkpoint.label}, float32 -> float16, medians of {runs} run(s), the three processes interleaved run by run",
        f"(`benchmarks/startup.py`), in {fresh_env.describe()}.",
        "*CLI* is the whole `streamconv convert` process (the console script), timed from outside;",
        "*in process* is `streamconv.convert(...)` alone, timed inside a fresh process; *imports* is a process that",
        "only imports what `convert` imports, as the CLI does. Start-up and exit = CLI minus in process, run by run.",
        "CPU is user + system seconds, of all threads.",
        f"Load average (1 min): {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores.",
        "",
        "| what | wall (s) | CPU (s) |",
        "|---|---|---|",
        f"| CLI, whole process (wall min–max {min(walls):.2f}–{max(walls):.2f}) | {cell(times['cli'])} |",
        f"| in process, the conversion alone | {cell(times['in'])} |",
        f"| **start-up and exit** (CLI minus in process; target: wall ≤ {TARGET_S}) | {cell(extra, bold=True)} |",
        f"| of which: interpreter and imports (the imports-only process) | {cell(times['imports'])} |",
        f"| of which: the rest (parsing, exit) | {cell(rest)} |",
        "",
        f"CLI ÷ in process, wall, median of the runs' ratios: {ratio:.2f}.",
        "",
        "`import X` in a fresh process, timed around the import alone, after `import numpy` (numpy's row: alone),",
        f"median of {runs}; *÷ conversion*: that time over the in-process conversion's wall time above ({conversion:.3f} s);",
        "*convert imports it*: loaded by the end of the in-process float32 -> float16 conversion.",
        "",
        "| module | import (s) | ÷ conversion | convert imports it | timed in |",
        "|---|---|---|---|---|",
    ]
    for name, (seconds, where) in imported.items():
        figures = f"{seconds:.3f} | {seconds / conversion:.2f}" if isinstance(seconds, float) else f"{seconds} | "
        lines.append(f"| {name} | {figures} | {'yes' if name in loaded else 'no'} | {where} |")
    overhead = statistics.median(e[0] for e in extra)
    target = [f"CLI start-up and exit ≤ {TARGET_S} s over in process (wall, fresh install)", checkpoint.label,
              f"{overhead:.3f} s", "PASS" if overhead <= TARGET_S else "**FAIL**"]
    return [*lines, ""], [target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each process (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny BERT instead of BERT-base")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkpoints and outputs")
    args = parser.parse_args()
    print("\n".join(measure(args.workdir, args.runs, args.quick)[0]))


if __name__ == "__main__":
    main()
