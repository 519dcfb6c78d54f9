"""The command line: parse arguments, call the library, print, map errors to exit codes.

``streamconv convert`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from streamconv._version import __version__
from streamconv.errors import InvalidOptionError, StreamconvError

__all__ = ["build_parser", "main"]

VALIDATION_FAILED = 6
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def parse_size(text: str) -> int:
    """Parse ``4MiB``, ``4M``, ``512k`` or ``1048576`` into bytes (binary multiples)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write it like 4MiB, 512KiB or 1048576")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** "_kmgt".index(unit or "_"))
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 1 byte")
    return size


def build_parser() -> argparse.ArgumentParser:
    """The ``streamconv`` argument parser with its subcommands."""
    from streamconv.constants import (  # numpy: imported here, after main catches Ctrl-C
        COMPRESSION_CHOICES,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_COMPRESSION,
        DEFAULT_DTYPE,
        DEFAULT_WORKERS,
        DEFAULT_ZSTD_LEVEL,
        DTYPE_CHOICES,
    )

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    parser = _Parser(
        prog="streamconv",
        description="Stream Hugging Face safetensors checkpoints into compressed Parquet weights.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"streamconv {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    conv = commands.add_parser(
        "convert",
        parents=[common],
        help="convert a checkpoint to Parquet weights",
        description="Convert a safetensors checkpoint (folder, .safetensors file or hub repo id) "
        "into OUTPUT/weights.parquet, metadata.json and the model's assets.",
    )
    conv.add_argument("source", nargs="?", metavar="SOURCE", help="checkpoint folder, .safetensors file, or hub repo id")
    conv.add_argument("--model", dest="model", metavar="SOURCE", help="same as SOURCE (the old tool's spelling)")
    conv.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output folder to create")
    conv.add_argument("--type", dest="model_type", default="auto", metavar="TYPE",
                      help="model plan: auto (default) or one listed by `streamconv types`")
    conv.add_argument("--parts", type=lambda s: [p for p in s.split(",") if p], metavar="A,B",
                      help="plan parts to convert, e.g. vision,text for CLIP (default: the plan's)")
    conv.add_argument("--dtype", choices=DTYPE_CHOICES, default=DEFAULT_DTYPE,
                      help=f"float target; int and bool tensors are never cast (default {DEFAULT_DTYPE})")
    conv.add_argument("--compression", choices=COMPRESSION_CHOICES, default=DEFAULT_COMPRESSION,
                      help=f"codec of the data column (default {DEFAULT_COMPRESSION})")
    conv.add_argument("--level", type=int, default=DEFAULT_ZSTD_LEVEL,
                      help=f"zstd level (default {DEFAULT_ZSTD_LEVEL})")
    conv.add_argument("--include", action="append", default=[], metavar="GLOB",
                      help="keep only tensors whose source name matches (repeatable)")
    conv.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                      help="drop tensors whose source name matches (repeatable)")
    conv.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_SIZE, metavar="SIZE",
                      help="largest chunk (one Parquet row), e.g. 4MiB (default 2MiB)")
    conv.add_argument("--revision", help="hub branch, tag or commit (hub sources)")
    conv.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                      help=f"compression threads (default {DEFAULT_WORKERS})")
    conv.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    conv.add_argument("--strict", action="store_true",
                      help="fail instead of warning when an asset cannot be copied or built "
                      "(a tokenizer that cannot be converted, a config file that is not JSON)")
    conv.add_argument("--dry-run", action="store_true", help="show what would be written and its estimated size")
    conv.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")

    insp = commands.add_parser("inspect", parents=[common], help="show a converted output's tensors and metadata")
    insp.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    insp.add_argument("--json", action="store_true", help="print as JSON")

    val = commands.add_parser(
        "validate",
        parents=[common],
        help="compare a converted output with its source (needs torch and transformers)",
        description="Check that every stored tensor equals the documented cast of its source, and that "
        "the model with the converted weights gives the original model's outputs within the stored "
        "dtype's tolerance. Exit 0 if every check passes, 6 if one fails.",
    )
    val.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    val.add_argument("--source", metavar="SOURCE", help="the original checkpoint (default: the one in metadata.json)")
    val.add_argument("--json", action="store_true", help="print the result as JSON")

    commands.add_parser("types", parents=[common], help="list the model plans and what each detects")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success)."""
    args: argparse.Namespace | None = None
    before = None
    try:
        with _sigterm_raises():
            with _interrupts_held():  # start-up: parse, and import numpy, pyarrow... (see there)
                parser = build_parser()
                args = parser.parse_args(argv)
                before = _output_identity(args)  # with args, so an interrupt line can compare
                _import_command(args.command)
            if args.command is None:
                parser.print_help()
                return 2
            handlers = {"convert": _convert, "inspect": _inspect, "validate": _validate, "types": _types}
            return handlers[args.command](args)
    except BrokenPipeError:  # `streamconv inspect OUT | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see _sigterm_raises)
        print(_interrupt_line(args, before, exc), file=sys.stderr)
        return SIGTERM_EXIT if isinstance(exc, _Terminated) else SIGINT_EXIT
    except Exception as exc:  # every error becomes one line; --debug shows the traceback
        if args is not None and args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, StreamconvError) else 1


# Interrupts. SIGTERM raises like Ctrl-C, so the same clean-up runs (the staging folder is
# removed, an old output stays), and exits 128 + 15 = 143 as a process killed by SIGTERM does by
# shell convention, so supervisors (systemd, Kubernetes, `timeout`) see what ended it.
SIGINT_EXIT = 130
SIGTERM_EXIT = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised by the handler :func:`_sigterm_raises` installs."""


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Make SIGTERM raise :class:`_Terminated` while the block runs (main thread; an ignored SIGTERM stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
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


def _import_command(command: str | None) -> None:
    """Import the modules ``command`` needs now, while interrupts are held."""
    import importlib

    module = {"convert": "streamconv.convert", "inspect": "streamconv.reader",
              "validate": "streamconv.validate", "types": "streamconv.plans"}.get(command or "")
    if module:
        importlib.import_module(module)


def _output_identity(args: argparse.Namespace | None) -> tuple[int, int] | None:
    """(device, inode) of ``convert``'s output name now, None if nothing is there."""
    if args is None or args.command != "convert" or not args.output:
        return None
    try:
        st = os.lstat(os.path.expanduser(args.output))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _interrupt_line(args: argparse.Namespace | None, before: tuple[int, int] | None, exc: BaseException) -> str:
    """The one line for an interrupt, saying truly what the output name holds now.

    It compares the output name's inode now with the one before the conversion: the new output
    (and an atomic --force exchange) brings another inode under the name, an untouched old
    output keeps its own.
    """
    how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
    if args is None or args.command != "convert" or not args.output or args.dry_run:
        return f"error: {how}; nothing was written"
    now, output = _output_identity(args), args.output
    if now is None:
        state = f"nothing was written under {output}" if before is None else f"nothing is under {output} now"
    elif now == before:
        state = f"{output} still holds the old output, unchanged"
    else:
        state = f"{output} holds the new output, complete"
    return f"error: {how}; {state}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, StreamconvError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {text}; rerun with --debug and report it"


def _convert(args: argparse.Namespace) -> int:
    from streamconv.constants import progress_bars_disabled
    from streamconv.convert import convert

    if args.source and args.model and args.source != args.model:
        raise InvalidOptionError("give the checkpoint once: as SOURCE or as --model, not both")
    source = args.source or args.model
    if not source:
        raise InvalidOptionError("missing SOURCE: `streamconv convert SOURCE -o OUTPUT`")
    quiet = args.quiet or args.json or args.dry_run
    show_progress = not quiet and sys.stderr.isatty() and not progress_bars_disabled()
    result = convert(
        source,
        args.output,
        model_type=args.model_type,
        parts=args.parts,
        dtype=args.dtype,
        compression=args.compression,
        level=args.level,
        include=args.include,
        exclude=args.exclude,
        chunk_size=args.chunk_size,
        force=args.force,
        dry_run=args.dry_run,
        revision=args.revision,
        workers=args.workers,
        progress=show_progress,
        strict=args.strict,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(_summary(result, args.model_type))
    return 0


def _summary(result: Any, requested: str) -> str:
    lines = []
    if result.dry_run:
        lines.append(f"dry run: {result.source} -> {result.output_dir} would hold:")
        width = max(len(t["name"]) for t in result.tensors)
        for t in result.tensors:
            shape = "x".join(map(str, t["shape"])) or "scalar"
            lines.append(f"  {t['name']:<{width}}  {shape:>16}  {t['source_dtype']:>8} -> {t['dtype']:<8}  {_size(t['bytes']):>10}")
    else:
        lines.append(f"converted {result.source} -> {result.output_dir}")
    if requested != "auto":
        how = f"--type {requested}"
    else:
        how = "detected" if result.detected else "no plan recognised the checkpoint"
    lines.append(f"  model type {result.model_type} ({how}), parts {','.join(result.parts)}")
    codec = f"zstd-{result.level}" if result.compression == "zstd" else "no compression"
    lines.append(
        f"  {result.tensor_count} tensors, {result.parameter_count:,} parameters, "
        f"{result.chunk_count} chunks, {result.dtype}, {codec}"
    )
    verb = "estimated" if result.dry_run else "written"
    lines.append(
        f"  {_size(result.source_bytes)} -> {_size(result.output_bytes)} {verb} "
        f"({result.ratio:.2f}x) in {result.seconds:.2f} s"
    )
    if result.dry_run:
        lines.extend(
            f"  asset {a['path']}" + (f" (built from {', '.join(a['built_from'])})" if "built_from" in a else "")
            for a in result.assets
        )
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _inspect(args: argparse.Namespace) -> int:
    from streamconv.reader import describe, read_metadata, weights_path

    weights = weights_path(args.output)
    metadata = read_metadata(args.output)
    tensors = describe(weights)
    if args.json:
        print(json.dumps({"metadata": metadata, "tensors": tensors}, indent=2))
        return 0
    stored = sum(t["stored_bytes"] for t in tensors)
    print(f"{weights}")
    print(
        f"  format {metadata.get('format_version')}, model type {metadata.get('model_type')}, "
        f"dtype {metadata.get('dtype')}, compression {metadata.get('compression', {}).get('codec')}"
        f"-{metadata.get('compression', {}).get('level')}"
    )
    print(
        f"  {len(tensors)} tensors, {metadata.get('parameter_count', 0):,} parameters, "
        f"{_size(metadata.get('source_bytes', 0))} -> {_size(metadata.get('output_bytes', 0))} "
        f"({metadata.get('ratio', 0):.2f}x)"
    )
    for warning in metadata.get("warnings", []):
        print(f"  warning: {warning}")
    for asset in metadata.get("assets", []):
        print(f"  asset {asset['path']} ({_size(asset['bytes'])}, sha256 {asset['sha256'][:12]}...)")
    width = max((len(t["name"]) for t in tensors), default=4)
    print(f"\n  {'name':<{width}}  {'shape':>16}  {'dtype':<8}  {'chunks':>6}  {'stored':>10}")
    for t in tensors:
        shape = "x".join(map(str, t["shape"])) or "scalar"
        print(f"  {t['name']:<{width}}  {shape:>16}  {t['dtype']:<8}  {t['chunks']:>6}  {_size(t['stored_bytes']):>10}")
    print(f"\n  data column: {_size(stored)}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from streamconv.validate import validate

    result = validate(args.output, args.source)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"validated {result.output_dir} against {result.source}")
        for check in result.checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
        print("  passed" if result.passed else "  FAILED")
    return 0 if result.passed else VALIDATION_FAILED


def _types(args: argparse.Namespace) -> int:
    from streamconv.plans import PLANS, plan_names

    for name in plan_names():
        plan = PLANS[name]
        parts = ", ".join(f"{p}{'*' if p in plan.default_parts else ''}" for p in plan.parts)
        print(f"{name}: {plan.summary}")
        print(f"  detects: {plan.detection()}")
        print(f"  parts:   {parts}  (* = default)")
    return 0
