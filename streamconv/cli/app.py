"""The command line: parse arguments, call the library, print, map errors to exit codes.

``streamconv convert`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from streamconv._version import __version__
from streamconv.cli.display import codec_label, conversion_summary, printable, size
from streamconv.cli.interrupts import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    Terminated,
    interrupt_line,
    interrupts_held,
    output_identity,
    sigterm_raises,
)
from streamconv.cli.startup import program_start
from streamconv.constants import COMPRESSION_CHOICES, DTYPE_CHOICES, progress_bars_disabled
from streamconv.errors import NOVALUE, InvalidOptionError, StreamconvError
from streamconv.pipeline.options import ConvertOptions, option_names

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
    parser = _Parser(
        prog="streamconv",
        description="Stream Hugging Face safetensors checkpoints into compressed Parquet weights.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Given after the command too. SUPPRESS: a command without it keeps what the main parser set
    # (a default there would overwrite `streamconv --debug validate`'s True with False).
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
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
                      help="plan parts to convert, e.g. vision,text (default: the plan's; see `streamconv types`)")
    conv.add_argument("--dtype", choices=DTYPE_CHOICES,
                      help=f"float target; int and bool tensors are never cast (default {_default('dtype')})")
    conv.add_argument("--compression", choices=COMPRESSION_CHOICES,
                      help=f"codec of the data column (default {_default('compression')})")
    conv.add_argument("--level", type=int,
                      help="zstd level -7 to 22 on every byte plane (default: the coder tuned per plane, smaller and faster)")
    conv.add_argument("--include", action="append", metavar="GLOB",
                      help="keep only tensors whose source name matches (repeatable)")
    conv.add_argument("--exclude", action="append", metavar="GLOB",
                      help="drop tensors whose source name matches (repeatable)")
    conv.add_argument("--chunk-size", type=parse_size, metavar="SIZE",
                      help="largest chunk (one Parquet row), e.g. 4MiB (default 2MiB)")
    conv.add_argument("--max-file-size", type=parse_size, metavar="SIZE",
                      help="split the weights into files of at most SIZE, e.g. 2GiB (default: one file)")
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
    insp.add_argument("--source-names", action="store_true", help="list tensors under their source checkpoint names")

    exp = commands.add_parser(
        "export", parents=[common], help="write a converted output back as a Hugging Face safetensors checkpoint",
        description="Write OUTPUT as a checkpoint folder that Hugging Face libraries load: "
        "safetensors under the source names, sharded when needed, with config.json and every asset.",
    )
    exp.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    exp.add_argument("--to", required=True, metavar="DIR", help="checkpoint folder to create")
    exp.add_argument("--dtype", choices=("keep", "float16", "float32"), default="keep",
                     help="dtype of float tensors (default keep: the stored dtypes)")
    exp.add_argument("--max-shard-size", type=parse_size, metavar="SIZE",
                     help="shard model.safetensors beyond SIZE (default 5GiB)")
    exp.add_argument("--force", action="store_true", help="replace DIR if it exists")
    exp.add_argument("--json", action="store_true", help="print the result as JSON")

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

    ver = commands.add_parser(
        "verify", parents=[common], help="check a converted output on its own: every chunk and file",
        description="Re-read OUTPUT without its source: every chunk's checksum and decoding, every file's size "
        "and sha256 against metadata.json, and its counts. Exit 0 if all is fine, 3 if anything is damaged.",
    )
    ver.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")
    ver.add_argument("--json", action="store_true", help="print the whole report as JSON")

    commands.add_parser("types", parents=[common], help="list the model plans and what each detects")
    return parser


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(ConvertOptions) if f.name == name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success).

    Without ``argv`` it is the program (``streamconv``, ``python -m streamconv``) and starts as
    one (:func:`streamconv.cli.startup.program_start`); with ``argv`` it leaves the process alone.
    """
    args: argparse.Namespace | None = None
    before = None
    parser = build_parser()
    try:
        with sigterm_raises():
            with interrupts_held():  # start-up: parse, and import numpy, pyarrow... (see there)
                args = parser.parse_args(argv)
                before = output_identity(args)  # with args, so an interrupt line can compare
                uses_blas = args.command == "validate" or getattr(args, "validate", False)
                with program_start(uses_blas) if argv is None else contextlib.nullcontext():
                    _import_command(args.command)
            if args.command is None:
                parser.print_help()
                return 2
            handlers = {"convert": _convert, "inspect": _inspect, "validate": _validate, "types": _types,
                        "export": _export, "verify": _verify}
            return handlers[args.command](args)
    except BrokenPipeError:  # `streamconv inspect OUT | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see sigterm_raises)
        print(interrupt_line(args, before, exc), file=sys.stderr)
        return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT
    except Exception as exc:  # every error becomes one line; --debug shows the traceback
        if args is not None and args.debug:
            raise
        print(f"error: {_one_line(exc, parser)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, StreamconvError) else 1


def _import_command(command: str | None) -> None:
    """Import the modules ``command`` needs now, while interrupts are held."""
    import importlib

    module = {"convert": "streamconv.pipeline.convert", "inspect": "streamconv.format.reader",
              "validate": "streamconv.tools.validate", "types": "streamconv.plans", "export": "streamconv.tools.export",
              "verify": "streamconv.tools.verify"}.get(command or "")
    if module:
        importlib.import_module(module)


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
    from streamconv.pipeline.convert import convert

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
        print(conversion_summary(result, fields.get("model_type", "auto")))
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


def _inspect(args: argparse.Namespace) -> int:
    from streamconv.plans import FALLBACK, get_plan
    """Header (source, model type, parts, pooling), assets, then the tensors in natural order."""
    from streamconv.format.reader import describe, read_metadata, weights_path

    weights = weights_path(args.output)
    metadata = read_metadata(args.output)
    tensors = describe(weights)
    if args.json:
        print(json.dumps({"metadata": metadata, "tensors": [t.to_dict() for t in tensors]}, indent=2))
        return 0
    stored = sum(t.stored_bytes for t in tensors)
    source: dict[str, Any] = metadata["source"] if isinstance(metadata.get("source"), dict) else {}
    print(f"{weights}")
    print(f"  source {printable(str(source.get('id', '?')))}"
          + (f" @ {source['revision']}" if source.get("revision") else ""))
    print(
        f"  format {metadata.get('format_version')}, model type {metadata.get('model_type')}, "
        f"parts {','.join(metadata.get('parts') or []) or '-'}, "
        f"dtype {metadata.get('dtype')}, compression {codec_label(metadata.get('compression'), metadata.get('level'))}"
    )
    for line in get_plan(str(metadata.get("model_type", FALLBACK)))().describe(metadata):
        print(f"  {line}")
    files = metadata.get("files") or []
    print(
        f"  {len(tensors)} tensors, {metadata.get('parameter_count', 0):,} parameters, "
        f"{size(metadata.get('source_bytes', 0))} -> {size(metadata.get('output_bytes', 0))} "
        f"({metadata.get('ratio', 0):.2f}x)" + (f" in {len(files)} files" if len(files) > 1 else "")
    )
    for warning in metadata.get("warnings", []):
        print(f"  warning: {printable(str(warning), 400)}")
    for asset in metadata.get("assets", []):
        print(f"  asset {printable(str(asset.get('path')))} ({size(asset.get('bytes', 0))}, "
              f"sha256 {str(asset.get('sha256'))[:12]}...)")
    label = "source name" if args.source_names else "name"
    rows = sorted(((printable(t.source_name if args.source_names else t.name), t) for t in tensors),
                  key=lambda row: _natural_key(row[0]))
    width = max((len(n) for n, _ in rows), default=len(label))
    print(f"\n  {label:<{width}}  {'shape':>16}  {'dtype':<8}  {'chunks':>6}  {'stored':>10}")
    for name, t in rows:
        shape = "x".join(map(str, t.shape)) or "scalar"
        print(f"  {name:<{width}}  {shape:>16}  {t.dtype:<8}  {t.chunk_count:>6}  {size(t.stored_bytes):>10}")
    print(f"\n  data column: {size(stored)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from streamconv.tools.export import export

    result = export(args.output, args.to, dtype=args.dtype, max_shard_size=args.max_shard_size, force=args.force)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    total = sum(f["bytes"] for f in result.files)
    print(f"exported {result.output} -> {result.target}")
    print(f"  {result.tensor_count} tensors, {len(result.files)} files, {size(total)}, dtype {result.dtype}, "
          f"in {result.seconds:.2f} s")
    print("".join(f"  warning: {w}\n" for w in result.warnings), end="")
    return 0


def _natural_key(name: str) -> list[Any]:
    """``layer.2`` before ``layer.10``: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _validate(args: argparse.Namespace) -> int:
    from streamconv.tools.validate import validate

    progress = not args.json and sys.stderr.isatty() and not progress_bars_disabled()
    report = validate(
        args.output, args.source, min_cosine=args.min_cosine, max_nmse=args.max_nmse, progress=progress
    ).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_validation_table(report, args.debug))
    return 0 if report["passed"] else VALIDATION_FAILED


def _verify(args: argparse.Namespace) -> int:
    from streamconv.tools.verify import exit_code, summary, verify

    report = verify(args.output)
    print(json.dumps(report.to_dict(), indent=2) if args.json else summary(report))
    return exit_code(report)


def _types(args: argparse.Namespace) -> int:
    from streamconv.plans import PLANS

    for plan in PLANS:
        name = plan.name
        parts = ", ".join(f"{p}{'*' if p in plan.default_parts else ''}" for p in plan.parts)
        print(f"{name}: {plan.summary}")
        print(f"  detects: {plan.detection()}")
        print(f"  parts:   {parts}  (* = default)")
    return 0
