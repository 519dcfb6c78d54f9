"""Converting from the hub: range reads of the kept tensors beside download-then-convert (issue 19).

Every conversion is a fresh ``streamconv convert`` process (a fresh install's console script,
benchmarks/fresh_env.py) under ``/usr/bin/time -v`` against the loopback hub of ``tests/hubserver.py``
(127.0.0.1 only, through ``HF_ENDPOINT``), with an empty ``HF_HOME`` of its own. Three ways per checkpoint, in the same run:

- *local*: the checkpoint folder on disk (the baseline for range reads unthrottled);
- *ranges*: ``convert ORG/NAME`` (the default: headers and kept tensors by byte ranges);
- *download*: ``convert ORG/NAME --download`` (the whole snapshot into the cache, then convert).

Columns: bytes the server sent (both origins), wall time, the conversion's CPU time (user +
system), peak RSS, the disk the run leaves used (the cache plus the output), and the CPU the
loopback server itself took (it shares the machine's cores with the conversion). Then the
bandwidth check: the CDN throttled to 50 MB/s, range reads must take at most 1.15 x (bytes
fetched / 50 MB/s) + 1 s.

Called by benchmarks/run.py (section ``hub``, written to docs/benchmarks-hub.md); alone:
python benchmarks/hub.py [--quick] [--only minilm,clip] [--output docs/benchmarks-hub.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fresh_env
from make_checkpoints import CHECKPOINTS, DEFAULT_WORKDIR, LLAMA_TINY, LlamaShape, ensure, stream_llama

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.hubserver import HubServer  # noqa: E402

#: The sharded bf16 row: a Llama-style shape of ~235 MB in three ~100 MB shards.
LLAMA_SHARDED = LlamaShape(hidden=1024, intermediate=2816, layers=4, vocab=32000, heads=16)
RATE = 50e6  # bytes per second, the throttled check
MODES = ("local", "ranges", "download")


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    args: tuple[str, ...]


ROWS = (
    Row("minilm", "MiniLM-L6 (real)", ()),
    Row("clip", "CLIP ViT-B/32 (vision)", ("--parts", "vision")),
    Row("whisper", "Whisper base (encoder)", ("--parts", "encoder")),
    Row("llama-sharded", "Llama-style bf16, 3 shards", ("--dtype", "keep")),
    # Big enough that the conversion, not the fixed cost of a hub run, decides the ratio to local.
    Row("bert-large", "BERT-large (float32, 1.3 GB)", ()),
)
QUICK_ROWS = (
    Row("tiny-bert", "tiny BERT (quick)", ()),
    Row("tiny-sharded", "tiny Llama-style bf16, sharded (quick)", ("--dtype", "keep")),
)


def _folder(name: str, workdir: Path) -> Path:
    if name in ("llama-sharded", "tiny-sharded"):
        target = workdir / "checkpoints" / name
        if not target.is_dir():
            tmp = target.with_name(name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shape = LLAMA_SHARDED if name == "llama-sharded" else LLAMA_TINY
            stream_llama(shape, tmp, shard_bytes=100_000_000 if name == "llama-sharded" else 4_000_000)
            if not (tmp / "config.json").exists():
                (tmp / "config.json").write_text("{\"model_type\": \"llama\"}")
            tmp.rename(target)
        return target
    return ensure(CHECKPOINTS[name], workdir)


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class Measured:
    wall: float
    rss_mib: float
    fetched: int
    disk: int
    kept: int = 0
    server_cpu: float = 0.0
    cpu: float = 0.0


def _run(server: HubServer, source: str, extra: tuple[str, ...], work: Path) -> Measured:
    home, out = work / "hf", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = fresh_env.environment(HF_ENDPOINT=server.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
                                HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_HUB_OFFLINE")
    before = server.cdn_bytes() + server.hub_bytes()
    cpu_before = os.times()  # this process is the server's: its threads answer the conversion
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        command = [*fresh_env.streamconv(), "convert", source, "-o", str(out), "--json", *extra]
        done = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *command],
                              env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        text = report.read()
    cpu_after = os.times()
    elapsed = re.search(r"Elapsed \(wall clock\) time .*: ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
    assert elapsed is not None and rss is not None
    wall = 0.0
    for part in elapsed.group(1).split(":"):
        wall = wall * 60 + float(part)
    result = json.loads(done.stdout)
    measured = Measured(wall, int(rss.group(1)) / 1024, server.cdn_bytes() + server.hub_bytes() - before,
                        _du(home) + _du(out), result["source_bytes"],
                        cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system, cpu)
    shutil.rmtree(work, ignore_errors=True)
    return measured


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def _median(runs: list[Measured]) -> Measured:
    ordered = sorted(runs, key=lambda m: m.wall)
    middle = ordered[len(ordered) // 2]
    return Measured(middle.wall, statistics.median(m.rss_mib for m in runs), middle.fetched, middle.disk, middle.kept,
                    statistics.median(m.server_cpu for m in runs), middle.cpu)


def measure(workdir: Path, quick: bool, only: str | None = None, runs: int = 3) -> list[str]:
    """Run every row in every mode (``runs`` times, interleaved), then the throttled check; the
    markdown lines of the report."""
    runs = 1 if quick else runs
    rows = QUICK_ROWS if quick else ROWS
    if only:
        rows = tuple(r for r in rows if r.name in only.split(","))
    scratch = workdir / "hub"
    table: dict[str, dict[str, Measured]] = {}
    started = time.monotonic()
    load = os.getloadavg()
    with HubServer() as server:
        for row in rows:
            folder = _folder(row.name, workdir)
            repo = f"bench/{row.name}"
            server.add_repo(repo, folder)
            done: dict[str, list[Measured]] = {mode: [] for mode in MODES}
            for _ in range(runs):
                for mode in MODES:
                    source = str(folder) if mode == "local" else repo
                    extra = (*row.args, "--download") if mode == "download" else row.args
                    done[mode].append(m := _run(server, source, extra, scratch / row.name / mode))
                    print(f"[hub] {row.name} {mode}: {_mb(m.fetched)} MB fetched, {m.wall:.2f} s, "
                          f"{m.rss_mib:.0f} MiB, {_mb(m.disk)} MB on disk", file=sys.stderr)
            table[row.name] = {mode: _median(done[mode]) for mode in MODES}
        throttled_row = rows[1] if len(rows) > 1 else rows[0]
        server.rate = RATE
        throttled = _run(server, f"bench/{throttled_row.name}", throttled_row.args, scratch / "throttled")
        server.rate = None
    minutes = (time.monotonic() - started) / 60
    lines = [
        "## Hub: range reads beside download-then-convert",
        "",
        "`benchmarks/hub.py`: each conversion a fresh `streamconv convert` process of a fresh install (under `/usr/bin/time -v`)",
        "against the loopback hub of `tests/hubserver.py` (two origins on 127.0.0.1: the hub, and the CDN its",
        f"302s point to), each with an empty `HF_HOME`; medians of {runs} run(s), the three ways interleaved run by",
        f"run, all in the same run of the script ({minutes:.1f} min; load average {load[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cores shared with other work).",
        "*fetched*: bytes the server sent (both origins; for *local*, none); *disk*: the cache plus the output",
        "once the run ends; *kept*: the bytes of the tensors converted; *CPU*: the conversion's user + system",
        "time (on a loaded machine, wall follows it); *server CPU*: what the loopback server",
        "took meanwhile. The server is Python too, on the same cores, but not the bottleneck: it sends weights",
        "with `os.sendfile` and sets `TCP_NODELAY`, as real servers do. A real hub is neither on this machine",
        "nor this fast: there, the transfer is bounded by the network (the throttled check below).",
        "",
        "| checkpoint | kept (MB) | way | fetched (MB) | fetched / kept | wall (s) | vs local | CPU (s) | peak RSS (MiB) "
        "| disk (MB) | server CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        local = table[row.name]["local"]
        for mode in MODES:
            m = table[row.name][mode]
            ratio = f"{m.fetched / m.kept:.2f}" if mode != "local" and m.kept else "–"
            lines.append(f"| {row.label} | {_mb(m.kept)} | {mode} | {_mb(m.fetched)} | {ratio} | {m.wall:.2f} | "
                         f"{m.wall / local.wall:.2f}x | {m.cpu:.2f} | {m.rss_mib:.0f} | {_mb(m.disk)} | {m.server_cpu:.2f} |")
    bound = 1.15 * throttled.fetched / RATE + 1
    lines += [
        "",
        f"Throttled: the CDN at {RATE / 1e6:.0f} MB/s for all transfers together, {throttled_row.label} by range reads:",
        f"{_mb(throttled.fetched)} MB in {throttled.wall:.2f} s; the target 1.15 x fetched / {RATE / 1e6:.0f} MB/s + 1 s "
        f"is {bound:.2f} s: **{'PASS' if throttled.wall <= bound else 'FAIL'}** "
        f"(transfer alone {throttled.fetched / RATE:.2f} s; peak RSS {throttled.rss_mib:.0f} MiB).",
        "",
    ]
    return lines


def report(workdir: Path, quick: bool, path: Path, only: str | None = None, runs: int = 3) -> list[str]:
    """Measure, write the report to ``path``; the lines that link it from docs/benchmarks.md."""
    lines = measure(workdir, quick, only, runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks: converting from the hub\n\nGenerated by `benchmarks/hub.py` (`make bench` "
                    "runs it, through benchmarks/run.py); do not edit by hand.\n\n" + "\n".join(lines))
    verdict = next((line for line in lines if line.startswith("Throttled")), "")
    return ["## Hub", "", f"Range reads from a loopback hub beside download-then-convert: [{path.name}]({path.name}).",
            *([verdict.split(":", 1)[0] + ": " + lines[lines.index(verdict) + 1]] if verdict else []), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints, for a smoke test")
    parser.add_argument("--only", help="comma-separated rows: " + ",".join(r.name for r in ROWS))
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (default 3; --quick: 1)")
    parser.add_argument("--output", type=Path, help="write the report there (default: print it)")
    args = parser.parse_args()
    if args.output:
        report(args.workdir, args.quick, args.output, args.only, args.runs)
    else:
        print("\n".join(measure(args.workdir, args.quick, args.only, args.runs)))


if __name__ == "__main__":
    main()
