"""Benchmark streamconv against the naive transformers + pyarrow conversion and CTranslate2.

For each checkpoint (built by make_checkpoints.py, cached under --workdir) each
of its tools (naive and streamconv; also ct2, CTranslate2's converter, for the
whole Whisper model) runs as a whole process under ``/usr/bin/time -v``: one
untimed run each to warm the page cache, then --runs timed runs, cycling through
the tools. A tool whose Python module does not import (ctranslate2 for ct2) is
skipped and the report says so. The medians of wall time and peak RSS, the output
sizes and, computed outside the timed runs from streamconv's output, the
byte-plane entropy bound are written to docs/benchmarks.md (or --output).

Usage: python benchmarks/run.py [--runs N] [--only bert-base,clip] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from make_checkpoints import CHECKPOINTS, DEFAULT_WORKDIR, Checkpoint, ensure, select

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAIVE_SCRIPT = Path(__file__).resolve().parent / "naive_convert.py"
OUTPUTS = {"naive": "naive.parquet", "streamconv": "streamconv", "ct2": "ct2"}  # tool -> its output under out/NAME
REQUIRES = {"ct2": "ctranslate2"}  # tool -> module it needs beyond the dev requirements

RSS_LIMIT_MIB = 160.0
SPEEDUP_TARGET = 8.0
SPEEDUP_CHECKPOINT = "bert-base"
ENTROPY_SLACK = 1.01


class ToolFailed(RuntimeError):
    """A converter process exited with a non-zero status."""


@dataclass
class Run:
    """Wall time and peak resident set size of one process."""

    wall_s: float
    rss_mib: float


@dataclass
class Stored:
    """What streamconv stored, read back tensor by tensor."""

    tensors: int
    parameters: int
    raw_bytes: int
    entropy_bytes: float
    digests: dict[str, str]


@dataclass
class Result:
    """Everything measured for one checkpoint."""

    checkpoint: Checkpoint
    source_bytes: int
    runs: dict[str, list[Run]] = field(init=False)
    output_bytes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    stored: Stored | None = None
    naive_digests: dict[str, str] | None = None

    def __post_init__(self) -> None:
        """Start with no timed runs for each of the checkpoint's tools."""
        self.runs = {tool: [] for tool in self.checkpoint.tools}

    def median(self, tool: str, attr: str) -> float | None:
        """Median of ``attr`` ("wall_s" or "rss_mib") over the timed runs of ``tool``."""
        values = [getattr(r, attr) for r in self.runs[tool]]
        return statistics.median(values) if values else None

    def ratio(self, attr: str, tool: str = "naive") -> float | None:
        """Median ``attr`` of ``tool`` divided by median ``attr`` of streamconv."""
        other, fast = self.median(tool, attr), self.median("streamconv", attr)
        return other / fast if other is not None and fast else None


def parse_time_v(text: str) -> Run:
    """Read wall time and peak RSS from the report of ``/usr/bin/time -v``."""
    elapsed = re.search(r"Elapsed \(wall clock\) time .*: ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if elapsed is None or rss is None:
        raise ValueError(f"unexpected /usr/bin/time output:\n{text}")
    seconds = 0.0
    for part in elapsed.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return Run(wall_s=seconds, rss_mib=int(rss.group(1)) / 1024)


def timed(command: list[str]) -> Run:
    """Run ``command`` under ``/usr/bin/time -v``; raise ToolFailed if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report.name, *command], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ToolFailed(f"exit status {proc.returncode}: {' '.join(command)}\n{tail}")
        return parse_time_v(report.read())


@functools.cache
def unavailable(tool: str) -> str | None:
    """Why ``tool`` cannot run here (the module it needs does not import), or None if it can."""
    module = REQUIRES.get(tool)
    if module is None:
        return None
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["no error message"])[-1]
    return f"`{module}` is not importable ({last}); install it with `pip install -r requirements-bench.txt`"


def command(tool: str, checkpoint: Checkpoint, source: Path, output: Path) -> list[str]:
    """The command line that converts ``source`` to ``output`` with ``tool``."""
    if tool == "naive":
        keep = [arg for prefix in checkpoint.keep for arg in ("--keep", prefix)]
        return [sys.executable, str(NAIVE_SCRIPT), str(source), str(output), *keep]
    if tool == "ct2":
        return [
            str(BIN / "ct2-transformers-converter"), "--model", str(source), "--output_dir", str(output),
            "--quantization", "float16", "--force",
        ]  # fmt: skip
    parts = ["--parts", ",".join(checkpoint.parts)] if checkpoint.parts else []
    return [
        str(BIN / "streamconv"), "convert", str(source), "-o", str(output),
        "--dtype", "float16", "--quiet", "--force", "--type", checkpoint.plan, *parts,
    ]  # fmt: skip


def disk_bytes(path: Path, pattern: str = "*") -> int:
    """Total size of the files matching ``pattern`` under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def plane_entropy_bytes(array: np.ndarray) -> float:
    """Order-0 entropy, in bytes, of the little-endian byte planes of ``array``.

    Plane j holds byte j of every element; each plane costs its Shannon entropy
    (over the 256 byte values) times its length, in bits.
    """
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    planes = little.view(np.uint8).reshape(-1, little.dtype.itemsize)
    bits = 0.0
    for j in range(planes.shape[1]):
        counts = np.bincount(planes[:, j], minlength=256)
        p = counts[counts > 0] / planes.shape[0]
        bits += float(-(p * np.log2(p)).sum()) * planes.shape[0]
    return bits / 8


def digest(data: bytes | memoryview) -> str:
    """Short content hash used to compare tensors across the two outputs."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_stored(output: Path) -> Stored:
    """Read streamconv's output back one tensor at a time and measure it."""
    import streamconv

    source_names = {t["name"]: t["source_name"] for t in streamconv.describe(output)}
    stored = Stored(tensors=0, parameters=0, raw_bytes=0, entropy_bytes=0.0, digests={})
    for name, array in streamconv.iter_tensors(output):
        stored.tensors += 1
        stored.parameters += array.size
        stored.raw_bytes += array.nbytes
        stored.entropy_bytes += plane_entropy_bytes(array)
        stored.digests[source_names[name]] = digest(np.ascontiguousarray(array).data)
    return stored


def read_naive_digests(output: Path) -> dict[str, str]:
    """Content hash of every tensor in the naive Parquet file, by state-dict name."""
    digests = {}
    for batch in pq.ParquetFile(output).iter_batches(batch_size=8, columns=["name", "data"]):
        for name, data in zip(batch.column("name").to_pylist(), batch.column("data").to_pylist()):
            digests[name] = digest(data)
    return digests


def measure(checkpoint: Checkpoint, workdir: Path, runs: int) -> Result:
    """Warm up, then time ``runs`` runs of each of the checkpoint's tools, cycling through them."""
    source = ensure(checkpoint, workdir)
    result = Result(checkpoint, source_bytes=disk_bytes(source, "*.safetensors"))
    result.skipped = {tool: why for tool in checkpoint.tools if (why := unavailable(tool))}
    for tool, why in result.skipped.items():
        print(f"[{checkpoint.name}] {tool} SKIPPED: {why}", file=sys.stderr)
    tools = [tool for tool in checkpoint.tools if tool not in result.skipped]
    outdir = workdir / "out" / checkpoint.name
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = {tool: outdir / OUTPUTS[tool] for tool in tools}
    for i in range(runs + 1):
        for tool in tools:
            if tool in result.errors:
                continue
            try:
                run = timed(command(tool, checkpoint, source, outputs[tool]))
            except ToolFailed as exc:
                result.errors[tool] = str(exc)
                print(f"[{checkpoint.name}] {tool} FAILED: {exc}", file=sys.stderr)
                continue
            label = f"run {i}/{runs}" if i else "warm-up"
            print(f"[{checkpoint.name}] {tool} {label}: {run.wall_s:.2f} s, {run.rss_mib:.0f} MiB", file=sys.stderr)
            if i:
                result.runs[tool].append(run)
    for tool in tools:
        if tool not in result.errors:
            result.output_bytes[tool] = disk_bytes(outputs[tool])
    # ct2's tensors are renamed, fused and deduplicated: only naive and streamconv are compared.
    if "streamconv" not in result.errors:
        result.stored = read_stored(outputs["streamconv"])
    if "naive" not in result.errors:
        result.naive_digests = read_naive_digests(outputs["naive"])
    return result


def fmt(value: float | None, spec: str = ".2f") -> str:
    """Format a number, or "n/a" when it could not be measured."""
    return "n/a" if value is None else format(value, spec)


def wall_cell(result: Result, tool: str) -> str:
    """Median wall time with the min-max range of the runs."""
    walls = [r.wall_s for r in result.runs[tool]]
    if not walls:
        return "failed" if tool in result.errors else "skipped" if tool in result.skipped else "n/a"
    if len(walls) == 1:
        return f"{walls[0]:.2f}"
    return f"{statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f})"


def same_tensors(result: Result) -> str:
    """Whether both tools stored the same fp16 tensors, matched by source (state-dict) name.

    streamconv may store a tensor under another name (Whisper's plan drops ``model.``); its
    ``source_name`` column is the name the naive path sees in ``state_dict()``.
    """
    if result.stored is None or result.naive_digests is None:
        return "n/a"
    ours, theirs = result.stored.digests, result.naive_digests
    differ = sum(ours.get(name) != theirs.get(name) for name in ours.keys() | theirs.keys())
    return "yes" if differ == 0 else f"no: {differ} of {len(ours.keys() | theirs.keys())} differ"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: list[Result]) -> str:
    """Per checkpoint and tool: time, memory, size and size ratios."""
    rows = []
    for r in results:
        entropy = r.stored.entropy_bytes if r.stored else None
        raw = r.stored.raw_bytes if r.stored else None
        for tool in r.checkpoint.tools:
            out = r.output_bytes.get(tool)
            rows.append([
                r.checkpoint.label, tool, wall_cell(r, tool), fmt(r.median(tool, "rss_mib"), ".0f"),
                fmt(out / 1e6 if out else None, ".1f"),
                fmt(r.source_bytes / out if out else None),
                fmt(raw / out if out and raw else None, ".3f"),
                fmt(out / entropy if out and entropy else None, ".4f"),
            ])  # fmt: skip
    header = ["Checkpoint", "Tool", "Wall s, median (min–max)", "Peak RSS MiB", "Output MB",
              "fp32 source ÷ output", "raw fp16 ÷ output", "output ÷ entropy bound"]  # fmt: skip
    return table(header, rows)


def comparison_table(results: list[Result]) -> str:
    """Per checkpoint: what was kept, the size references and naive ÷ streamconv."""
    rows = []
    for r in results:
        s = r.stored
        rows.append([
            r.checkpoint.label, fmt(s.tensors if s else None, "d"), fmt(s.parameters / 1e6 if s else None, ".1f"),
            f"{r.source_bytes / 1e6:.1f}", fmt(s.raw_bytes / 1e6 if s else None, ".1f"),
            fmt(s.entropy_bytes / 1e6 if s else None, ".1f"),
            fmt(r.ratio("wall_s"), ".1f"), fmt(r.ratio("rss_mib"), ".1f"), same_tensors(r),
        ])  # fmt: skip
    header = ["Checkpoint", "Tensors", "Params kept (M)", "fp32 source MB", "raw fp16 MB", "Entropy bound MB",
              "Wall naive ÷ streamconv", "RSS naive ÷ streamconv", "Same fp16 tensors as naive"]  # fmt: skip
    return table(header, rows)


def versus_table(results: list[Result], tool: str) -> str | None:
    """Per checkpoint ``tool`` converts: its medians and output size, and ``tool`` ÷ streamconv.

    None when no checkpoint in ``results`` is converted by ``tool``.
    """
    rows = []
    for r in results:
        if tool not in r.checkpoint.tools:
            continue
        out, ours = r.output_bytes.get(tool), r.output_bytes.get("streamconv")
        rows.append([
            r.checkpoint.label, wall_cell(r, tool), fmt(r.median(tool, "rss_mib"), ".0f"),
            fmt(out / 1e6 if out else None, ".1f"), fmt(r.ratio("wall_s", tool), ".1f"),
            fmt(r.ratio("rss_mib", tool), ".1f"), fmt(out / ours if out and ours else None, ".2f"),
        ])  # fmt: skip
    header = ["Checkpoint", f"{tool} wall s, median (min–max)", f"{tool} peak RSS MiB", f"{tool} output MB",
              f"Wall {tool} ÷ streamconv", f"RSS {tool} ÷ streamconv", f"Output {tool} ÷ streamconv"]  # fmt: skip
    return table(header, rows) if rows else None


def skipped_lines(results: list[Result]) -> list[str]:
    """One Markdown line per tool that was skipped on a checkpoint, saying why."""
    lines = [f"- {tool} skipped on {r.checkpoint.label}: {why}." for r in results for tool, why in r.skipped.items()]
    return [*lines, ""] if lines else []


def verdict(result: Result | None, value: float | None, passes: bool) -> str:
    """PASS or FAIL for a measured ``value``; FAIL if streamconv crashed; n/a if not run."""
    if result is not None and "streamconv" in result.errors:
        return "**FAIL** (streamconv failed)"
    if value is None:
        return "n/a"
    return "PASS" if passes else "**FAIL**"


def targets_table(results: list[Result]) -> str:
    """The issue's targets, checked against the measured numbers."""
    rows = []
    for r in results:
        rss = r.median("streamconv", "rss_mib")
        rows.append([f"streamconv peak RSS ≤ {RSS_LIMIT_MIB:.0f} MiB", r.checkpoint.label, f"{fmt(rss, '.0f')} MiB",
                     verdict(r, rss, rss is not None and rss <= RSS_LIMIT_MIB)])  # fmt: skip
    base = next((r for r in results if r.checkpoint.name == SPEEDUP_CHECKPOINT), None)
    speedup = base.ratio("wall_s") if base else None
    rows.append([f"streamconv wall time ≤ 1/{SPEEDUP_TARGET:.0f} of naive", CHECKPOINTS[SPEEDUP_CHECKPOINT].label,
                 f"naive ÷ streamconv = {fmt(speedup, '.1f')}",
                 verdict(base, speedup, speedup is not None and speedup >= SPEEDUP_TARGET)])  # fmt: skip
    for r in results:
        out, entropy = r.output_bytes.get("streamconv"), r.stored.entropy_bytes if r.stored else None
        ratio = out / entropy if out and entropy else None
        rows.append([f"output ≤ {ENTROPY_SLACK} × entropy bound", r.checkpoint.label,
                     f"output ÷ bound = {fmt(ratio, '.4f')}",
                     verdict(r, ratio, ratio is not None and ratio <= ENTROPY_SLACK)])  # fmt: skip
    return table(["Target", "Checkpoint", "Measured", "Result"], rows)


def version(distribution: str) -> str:
    """Installed version of ``distribution``, or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> list[str]:
    """Markdown bullet lines describing the machine and software."""
    meminfo = Path("/proc/meminfo").read_text()
    ram_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    distributions = ("numpy", "pyarrow", "torch", "transformers", "ctranslate2", "streamconv")
    packages = ", ".join(f"{d} {version(d)}" for d in distributions)
    return [
        f"- CPU: {cpu.group(1) if cpu else platform.machine()}, {len(os.sched_getaffinity(0))} cores (nproc)",
        f"- RAM: {ram_kib / 2**20:.1f} GiB total",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}; {packages}",
        f"- Commit: {commit.stdout.strip() if commit.returncode == 0 else 'none (uncommitted tree)'}",
    ]


def failures(results: list[Result]) -> list[str]:
    """Markdown lines listing the tool runs that failed, if any."""
    lines = []
    for r in results:
        for tool, error in r.errors.items():
            lines += [f"- {r.checkpoint.label}, {tool}:", "", "  ```", *(f"  {l}" for l in error.splitlines()), "  ```"]
    return ["## Failures", "", *lines, ""] if lines else []


def render(results: list[Result], runs: int, minutes: float) -> str:
    """The whole of docs/benchmarks.md."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(r.checkpoint.name for r in results)
    ct2 = versus_table(results, "ct2")
    return "\n".join([
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; do not edit by hand. Reproduce with `make bench`",
        "(`.venv/bin/python benchmarks/run.py`; `--only NAME,...`, `--runs N`, `--quick` for a smoke test).",
        "",
        f"Run on {date}: checkpoints {names}; {runs} timed run(s) per tool; the whole run took {minutes:.1f} min.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        f"## Results (median of {runs} run(s))",
        "",
        results_table(results),
        "",
        *skipped_lines(results),
        "## streamconv vs naive",
        "",
        comparison_table(results),
        "",
        *(["## streamconv vs CTranslate2 (ct2)", "", ct2, ""] if ct2 else []),
        "## Targets",
        "",
        targets_table(results),
        "",
        *failures(results),
        "## How to read this",
        "",
        "- The checkpoints are synthetic fp32 safetensors checkpoints with random-init weights and the real",
        "  architectures (BERT-base, BERT-large, CLIP ViT-B/32, Whisper base), built from transformers configs by",
        "  `benchmarks/make_checkpoints.py` with a fixed seed; \"sharded\" ones are saved with `max_shard_size=\"100MB\"`.",
        "  \"Whisper base (whole model)\" converts the same checkpoint folder as \"Whisper base (encoder)\".",
        "- Each tool runs as a whole process under `/usr/bin/time -v`, which gives the wall time and the peak",
        "  resident set size. One untimed run of each tool first warms the page cache; then the timed runs",
        "  cycle through the checkpoint's tools (naive, streamconv, and ct2 for the whole Whisper model).",
        f"  Numbers are medians of {runs} run(s); the machine is shared, so the min–max range shows the noise.",
        "- *naive* is `benchmarks/naive_convert.py`, the path people write today: transformers",
        "  `from_pretrained` on the whole model, `state_dict()`, `.half()` on each tensor, one pyarrow table",
        "  (name, shape, dtype, fp16 bytes) written with `pq.write_table(..., compression=\"zstd\")`.",
        "- *streamconv* is `streamconv convert SRC -o OUT --dtype float16 --quiet --force --type PLAN`",
        "  (with `--parts encoder,decoder` for the whole Whisper model).",
        "- *ct2* is CTranslate2's `ct2-transformers-converter --model SRC --output_dir OUT --quantization float16",
        "  --force`, run for the whole Whisper model only, since it always converts encoder and decoder. It loads the",
        "  model with transformers and writes every weight, uncompressed float16, to `model.bin`, next to",
        "  `config.json` and `vocabulary.json`. It renames tensors, fuses the q/k/v projections of self-attention",
        "  and the k/v projections of cross-attention into one matrix each, and stores identical tensors once",
        "  (with random-init weights many biases and layer-norm vectors are identical), so its tensors are not",
        "  compared with the others': only its time, memory and size are. The synthetic checkpoint has no tokenizer",
        "  files, so its `vocabulary.json` is `<|endoftext|>` padded by CTranslate2 with timestamp tokens to 51865",
        "  entries. The issue quotes 5.8 s and 795 MiB for this command on the real Whisper base, measured",
        "  elsewhere. It needs `ctranslate2` (`requirements-bench.txt`, installed by `make bench`); without it the",
        "  ct2 runs are skipped and the report says so.",
        "- To keep outputs comparable, naive and streamconv keep the same tensors: for CLIP the vision tower and",
        "  `visual_projection` (`vision_model.*`, `visual_projection.*`), for Whisper (encoder) the encoder",
        "  (`model.encoder.*`), for BERT everything. For Whisper (whole model) all three tools convert the encoder",
        "  and the decoder, i.e. every tensor in the checkpoint file: naive keeps `model.*` (`state_dict()` adds",
        "  `proj_out.weight`, which is tied to `model.decoder.embed_tokens.weight` and not in the file; keeping it",
        "  would store the 53 MB embedding twice) and streamconv runs with `--parts encoder,decoder`.",
        "  \"Same fp16 tensors as naive\" checks that naive and streamconv hold the same tensors, byte for byte",
        "  (matched by state-dict name, since streamconv's Whisper plan renames tensors).",
        "- Sizes are in MB = 10^6 bytes; memory in MiB. *Output* is the naive Parquet file, streamconv's whole",
        "  output folder (weights.parquet, metadata.json, copied config), or ct2's output folder (model.bin,",
        "  config.json, vocabulary.json). *fp32 source* is the size of the checkpoint's",
        "  `*.safetensors` files (the whole model, including towers a plan drops); *raw fp16* is 2 bytes per kept",
        "  parameter, read back from streamconv's output (the same parameters naive and ct2 store, so the ratios",
        "  to it apply to their rows too).",
        "- The *entropy bound*: each stored tensor's bytes are split into byte planes (plane j = byte j of each",
        "  little-endian element; two planes for float16); each plane costs its order-0 Shannon entropy over",
        "  the 256 byte values times its length; the sum over planes and tensors, in bytes, is the bound: what",
        "  an ideal order-0 coder of each byte plane would write (a coder that uses context can go below it).",
        "  It is computed after the timed runs.",
        "",
    ])


def main() -> None:
    """Parse the command line, run the benchmarks and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and checkpoint (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKPOINTS)}")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 run, bert-base only")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkpoints and outputs")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report to write")
    args = parser.parse_args()
    runs, only = (1, "bert-base") if args.quick else (args.runs, args.only)
    start = time.monotonic()
    results = [measure(checkpoint, args.workdir, runs) for checkpoint in select(only)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, runs, (time.monotonic() - start) / 60))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
