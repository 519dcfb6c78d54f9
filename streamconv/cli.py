"""The command line: parse arguments, call the library, print, map errors to exit codes.

``streamconv convert`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from streamconv._version import __version__
from streamconv.constants import COMPRESSION_CHOICES, DEFAULT_ZSTD_LEVEL, DTYPE_CHOICES, progress_bars_disabled
from streamconv.errors import NOVALUE, InvalidOptionError, StreamconvError
from streamconv.options import ConvertOptions, option_names

__all__ = ["build_parser", "main"]

VALIDATION_FAILED = 6
#: Longest tensor name shown in a table; longer ones are cut in the middle (``--json`` keeps them).
MAX_NAME_WIDTH = 96
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
        argument_default=argparse.SUPPRESS,  # unset options keep ConvertOptions' defaults
    )
    conv.add_argument("source", nargs="?", metavar="SOURCE", help="checkpoint folder, .safetensors file, or hub repo id")
    conv.add_argument("--model", dest="model", metavar="SOURCE", help="same as SOURCE (the old tool's spelling)")
    conv.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output folder to create")
    # Every dest below is a field of ConvertOptions: _convert passes them on by name.
    conv.add_argument("--type", dest="model_type", metavar="TYPE",
                      help="model plan: auto (default) or one listed by `streamconv types`")
    conv.add_argument("--parts", type=lambda s: [p for p in s.split(",") if p], metavar="A,B",
                      help="plan parts to convert, e.g. vision,text for CLIP (default: the plan's)")
    conv.add_argument("--dtype", choices=DTYPE_CHOICES,
                      help=f"float target; int and bool tensors are never cast (default {_default('dtype')})")
    conv.add_argument("--compression", choices=COMPRESSION_CHOICES,
                      help=f"codec of the data column (default {_default('compression')})")
    conv.add_argument("--level", type=int, help=f"zstd level, -7 to 22 (default {DEFAULT_ZSTD_LEVEL})")
    conv.add_argument("--include", action="append", metavar="GLOB",
                      help="keep only tensors whose source name matches (repeatable)")
    conv.add_argument("--exclude", action="append", metavar="GLOB",
                      help="drop tensors whose source name matches (repeatable)")
    conv.add_argument("--chunk-size", type=parse_size, metavar="SIZE",
                      help="largest chunk (one Parquet row), e.g. 4MiB (default 2MiB)")
    conv.add_argument("--revision", help="hub branch, tag or commit (hub sources)")
    conv.add_argument("--workers", type=int, help=f"compression threads (default {_default('workers')})")
    conv.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    conv.add_argument("--strict", action="store_true",
                      help="fail instead of warning when an asset is missing or cannot be copied or built")
    conv.add_argument("--dry-run", action="store_true", help="show what would be written and its estimated size")
    conv.add_argument("--validate", dest="validate", action="store_true",
                      help="validate the output against the source after writing (needs torch and transformers); "
                      "the report goes into metadata.json, exit 6 if it fails")
    conv.add_argument("--json", action="store_true", default=False, help="print the result as JSON on stdout")
    conv.add_argument("-q", "--quiet", action="store_true", default=False, help="no progress bar and no summary")

    insp = commands.add_parser("inspect", parents=[common], help="show a converted output's tensors and metadata")
    insp.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    insp.add_argument("--json", action="store_true", help="print as JSON")

    val = commands.add_parser(
        "validate",
        parents=[common],
        help="compare a converted output with its source (needs torch and transformers)",
        description="Check that every stored tensor is named as the plan names it and equals the documented "
        "cast of its source, that every model tensor comes from the output, and that the model with the "
        "converted weights gives the original model's outputs within the stored dtype's limits. "
        "Exit 0 if every check passes, 6 if one fails.",
    )
    val.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    val.add_argument("--source", metavar="SOURCE", help="the original checkpoint (default: the one in metadata.json)")
    val.add_argument("--min-cosine", type=float, metavar="X", help="minimum cosine per probe item (overrides the dtype's)")
    val.add_argument("--max-nmse", type=float, metavar="X", help="maximum NMSE per probe (overrides the dtype's)")
    val.add_argument("--json", action="store_true", help="print every check, figure and limit as JSON")

    commands.add_parser("types", parents=[common], help="list the model plans and what each detects")
    return parser


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(ConvertOptions) if f.name == name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        handlers = {"convert": _convert, "inspect": _inspect, "validate": _validate, "types": _types}
        return handlers[args.command](args)
    except BrokenPipeError:  # `streamconv inspect OUT | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written under the output name", file=sys.stderr)
        return 130
    except Exception as exc:  # every error becomes one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"error: {_one_line(exc, parser)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, StreamconvError) else 1


def _one_line(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    if isinstance(exc, InvalidOptionError):
        return exc.render(_flag_labeller(parser))
    if isinstance(exc, StreamconvError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {text}; rerun with --debug and report it"


def _flag_labeller(parser: argparse.ArgumentParser) -> Any:
    """``label(name, value)`` for error messages: an option as its flag, ``--level 5``."""
    flags: dict[str, str] = {}
    for sub in _subparsers(parser):
        for action in sub._actions:
            if action.option_strings:
                flags.setdefault(action.dest, max(action.option_strings, key=len))

    def label(name: str, value: Any) -> str:
        flag = flags.get(name, name)
        if value is NOVALUE:
            return flag
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        return f"{flag} {value}"

    return label


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.values())
    return found


def _convert(args: argparse.Namespace) -> int:
    from streamconv.convert import convert

    if getattr(args, "source", None) and getattr(args, "model", None) and args.source != args.model:
        raise InvalidOptionError("give the checkpoint once: as SOURCE or as {model}, not both")
    source = getattr(args, "source", None) or getattr(args, "model", None)
    if not source:
        raise InvalidOptionError("missing SOURCE: `streamconv convert SOURCE -o OUTPUT`")
    fields = {k: v for k, v in vars(args).items() if k in option_names()}
    quiet = args.quiet or args.json or fields.get("dry_run", False)
    fields["progress"] = not quiet and sys.stderr.isatty() and not progress_bars_disabled()
    result = convert(source, args.output, ConvertOptions(**fields))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(_summary(result, fields.get("model_type", "auto")))
    if result.validation is not None:
        return _report_validation(result.validation, args, result.metadata_path)
    return 0


def _report_validation(report: dict[str, Any], args: argparse.Namespace, where: Any) -> int:
    """Print a validation report (a table, unless --json printed it already); exit 6 if it failed."""
    if not args.json and not getattr(args, "quiet", False):
        print(_validation_table(report, args.debug))
    if report["passed"]:
        return 0
    print(f"error: validation failed; the full report is in {where} (\"validation\")", file=sys.stderr)
    return VALIDATION_FAILED


def _validation_table(report: dict[str, Any], debug: bool) -> str:
    lines = [f"validated {report['output_dir']} against {report['source']}"]
    for check in report["checks"]:
        lines.append(f"  {'ok  ' if check['passed'] else 'FAIL'} {check['name']}: {check['detail']}")
    lines.append(f"  {'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s")
    messages = report.get("messages") or []
    if debug:
        lines.extend(f"  transformers: {m}" for m in messages)
    elif messages:
        lines.append(f"  transformers said {len(messages)} thing{'s' if len(messages) != 1 else ''}; rerun with --debug")
    return "\n".join(lines)


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
    codec = _codec_label(result.compression, result.level)
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


def _codec_label(compression: Any, level: Any) -> str:
    if isinstance(compression, dict):  # format 1: {"codec": ..., "level": ...}
        compression, level = compression.get("codec"), compression.get("level")
    return f"zstd-{level}" if compression == "zstd" else "none"


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
        print(json.dumps({"metadata": metadata, "tensors": [t.to_dict() for t in tensors]}, indent=2))
        return 0
    stored = sum(t.stored_bytes for t in tensors)
    print(f"{weights}")
    print(
        f"  format {metadata.get('format_version')}, model type {metadata.get('model_type')}, "
        f"dtype {metadata.get('dtype')}, compression {_codec_label(metadata.get('compression'), metadata.get('level'))}"
    )
    print(
        f"  {len(tensors)} tensors, {metadata.get('parameter_count', 0):,} parameters, "
        f"{_size(metadata.get('source_bytes', 0))} -> {_size(metadata.get('output_bytes', 0))} "
        f"({metadata.get('ratio', 0):.2f}x)"
    )
    for warning in metadata.get("warnings", []):
        print(f"  warning: {_printable(str(warning), 400)}")
    for asset in metadata.get("assets", []):
        print(f"  asset {_printable(str(asset.get('path')))} ({_size(asset.get('bytes', 0))}, "
              f"sha256 {str(asset.get('sha256'))[:12]}...)")
    names = [_printable(t.name) for t in tensors]
    width = max((len(n) for n in names), default=4)
    print(f"\n  {'name':<{width}}  {'shape':>16}  {'dtype':<8}  {'chunks':>6}  {'stored':>10}")
    for name, t in zip(names, tensors, strict=True):
        shape = "x".join(map(str, t.shape)) or "scalar"
        print(f"  {name:<{width}}  {shape:>16}  {t.dtype:<8}  {t.chunk_count:>6}  {_size(t.stored_bytes):>10}")
    print(f"\n  data column: {_size(stored)}")
    return 0


def _printable(text: str, limit: int = MAX_NAME_WIDTH) -> str:
    """``text`` safe for a terminal table: control characters escaped, long text cut in the middle."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(safe) <= limit:
        return safe
    keep = (limit - 3) // 2
    return f"{safe[:keep]}...{safe[-keep:]}"


def _validate(args: argparse.Namespace) -> int:
    from streamconv.validate import validate

    progress = not args.json and sys.stderr.isatty() and not progress_bars_disabled()
    report = validate(
        args.output, args.source, min_cosine=args.min_cosine, max_nmse=args.max_nmse, progress=progress
    ).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_validation_table(report, args.debug))
    return 0 if report["passed"] else VALIDATION_FAILED


def _types(args: argparse.Namespace) -> int:
    from streamconv.plans import PLANS

    for plan in PLANS:
        name = plan.name
        parts = ", ".join(f"{p}{'*' if p in plan.default_parts else ''}" for p in plan.parts)
        print(f"{name}: {plan.summary}")
        print(f"  detects: {plan.detection()}")
        print(f"  parts:   {parts}  (* = default)")
    return 0
