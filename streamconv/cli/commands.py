"""The one table of commands: each command's arguments, what it runs, and the module it imports.

A command is one :class:`Command` in :data:`COMMANDS`: adding one is one builder, one handler and
one row. :mod:`streamconv.cli.app` makes the parsers from the table, imports ``module`` while
interrupts are held, and calls ``run``. Handlers import the library inside, so ``streamconv
convert --help`` imports nothing heavy; every text they print comes from :mod:`.display`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamconv import progress
from streamconv.cli import display
from streamconv.constants import COMPRESSION_CHOICES, DTYPE_ALIASES, DTYPE_CHOICES, EXPORT_DTYPES, canonical_dtype
from streamconv.errors import InvalidOptionError
from streamconv.units import SIZE_HELP

__all__ = ["COMMANDS", "VALIDATION_FAILED", "Command", "command"]

VALIDATION_FAILED = 6


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: What the user types.
        help: One line for ``streamconv --help``.
        build: Adds the command's arguments to its parser.
        run: Runs the command on the parsed arguments; returns the exit code.
        module: The library module it needs, imported at start-up while interrupts are held.
        example: One command line shown in its ``--help``.
        description: The paragraph of its ``--help`` (default: ``help``).
        writes: The argument naming the folder it writes, for the interrupt line.
        reads: The argument naming what it works on, for the interrupt line of a command that writes nothing.
    """

    name: str
    help: str
    build: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    module: str
    example: str
    description: str = ""
    writes: str | None = None
    reads: str | None = None


def _dtype(text: str) -> str:
    return str(canonical_dtype(text))


_ALIASES = ", ".join(DTYPE_ALIASES)
_SIZE = f"SIZE: {SIZE_HELP}"


def _default(name: str) -> Any:
    from streamconv.pipeline.options import ConvertOptions

    return next(f.default for f in dataclasses.fields(ConvertOptions) if f.name == name)


def _output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="a folder written by `streamconv convert`")


def _json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", default=False, help=f"print {what} as JSON on stdout")


def build_convert(conv: argparse.ArgumentParser) -> None:
    # Unset options keep ConvertOptions' defaults (the parser's argument_default is SUPPRESS);
    # every dest below but source/model/output/json is a field of ConvertOptions, passed on by name.
    # Sizes stay strings here: ConvertOptions parses them, so its errors name the flag.
    add = conv.add_argument
    add("source", nargs="?", metavar="SOURCE", help="checkpoint folder, .safetensors or .bin file, or hub repo id")
    add("--model", dest="model", metavar="SOURCE", help="same as SOURCE (the old tool's spelling)")
    add("-o", "--output", required=True, metavar="OUTPUT", help="output folder to create")
    add("--type", dest="model_type", metavar="TYPE", help="model plan: auto (default) or one listed by `streamconv types`")
    add("--parts", type=lambda s: [p for p in s.split(",") if p], metavar="A,B",
        help="plan parts to convert, e.g. vision,text (default: the plan's; see `streamconv types`)")
    add("--dtype", type=_dtype, choices=DTYPE_CHOICES, metavar="DTYPE",
        help=f"float target: {', '.join(DTYPE_CHOICES)} (or {_ALIASES}); int and bool tensors are never cast; "
        f"int8: weight matrices as int8 codes with float16 block scales, the rest float16 (default {_default('dtype')})")
    add("--keep-float", dest="keep_float", action="append", metavar="GLOB",
        help="with --dtype int8: keep the weight matrices whose source name matches in float16 (repeatable)")
    add("--compression", choices=COMPRESSION_CHOICES, help=f"codec of the data column (default {_default('compression')})")
    add("--level", type=int, help="zstd level -7 to 22 on every byte plane (default: the coder tuned per plane)")
    add("--include", action="append", metavar="GLOB", help="keep only tensors whose source name matches (repeatable)")
    add("--exclude", action="append", metavar="GLOB", help="drop tensors whose source name matches (repeatable)")
    add("--chunk-size", metavar="SIZE", help="largest chunk (one Parquet row), e.g. 4MiB (default 2MiB)")
    add("--max-file-size", metavar="SIZE", help="split the weights into files of at most SIZE, e.g. 2GiB (default: one file)")
    add("--revision", help="hub branch, tag or commit (hub sources)")
    add("--download", action="store_true",
        help="hub sources: download the whole snapshot into the Hugging Face cache first, instead of "
        "reading only the kept tensors' byte ranges")
    add("--workers", type=int, help=f"compression threads (default {_default('workers')})")
    add("--force", action="store_true", help="replace OUTPUT if it is a streamconv output or empty (else refused)")
    add("--strict", action="store_true",
        help="fail instead of warning when an asset is missing or cannot be copied or built")
    add("--dry-run", action="store_true", help="show what would be written and its estimated size")
    add("--validate", dest="validate", action="store_true",
        help="validate the output against the source after writing (needs torch and transformers); "
        "the report goes into metadata.json, exit 6 if it fails")
    _json_argument(conv, "the result")


def run_convert(args: argparse.Namespace) -> int:
    from streamconv.pipeline.convert import convert
    from streamconv.pipeline.options import ConvertOptions, option_names

    if getattr(args, "source", None) and getattr(args, "model", None) and args.source != args.model:
        raise InvalidOptionError("give the checkpoint once: as SOURCE or as {model}, not both")
    source = getattr(args, "source", None) or getattr(args, "model", None)
    if not source:
        raise InvalidOptionError("missing SOURCE: `streamconv convert SOURCE -o OUTPUT`")
    fields = {k: v for k, v in vars(args).items() if k in option_names()}
    fields["progress"] = progress.wanted(quiet=args.quiet or args.json or fields.get("dry_run", False))
    result = convert(source, args.output, ConvertOptions(**fields))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(display.conversion_summary(result, fields.get("model_type", "auto")))
    if result.validation is not None:
        return _report_validation(result.validation, args, result.metadata_path)
    return 0


def _report_validation(report: dict[str, Any], args: argparse.Namespace, where: Any) -> int:
    """Print a validation report (unless --json printed it already, or -q); exit 6 if it failed."""
    if not args.json and not args.quiet:
        print(display.validation_table(report, args.debug))
    if report["passed"]:
        return 0
    print(f"error: validation failed; the full report is in {where} (\"validation\")", file=sys.stderr)
    return VALIDATION_FAILED


def build_inspect(parser: argparse.ArgumentParser) -> None:
    _output_argument(parser)
    _json_argument(parser, "the metadata and the tensors (in the order of the text)")
    parser.add_argument("--source-names", action="store_true", help="list tensors under their source checkpoint names")


def run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streamconv.errors import NotConvertedError
    from streamconv.format.reader import WeightsFile, read_metadata
    from streamconv.plans import FALLBACK, get_plan

    weights = WeightsFile(args.output)
    try:
        metadata: dict[str, Any] | None = read_metadata(args.output)
    except NotConvertedError:
        if Path(args.output).is_dir():
            raise
        metadata = None  # a weights file of its own (WeightsWriter's): no metadata.json to show
    tensors = display.inspect_order([e.info for e in weights.entries.values()], args.source_names)
    if args.json:
        print(json.dumps({"metadata": metadata, "tensors": [t.to_dict() for t in tensors]}, indent=2))
    elif not args.quiet:
        part = weights.parts[0]
        plan_lines = get_plan(str(metadata.get("model_type", FALLBACK)))().describe(metadata) if metadata else []
        print(display.inspect_text(weights.path, metadata, tensors, args.source_names, plan_lines,
                                   (part.version, part.compression)))
    return 0


def build_export(parser: argparse.ArgumentParser) -> None:
    _output_argument(parser)
    parser.add_argument("--to", dest="target", required=True, metavar="DIR", help="checkpoint folder to create")
    parser.add_argument("--dtype", type=_dtype, choices=EXPORT_DTYPES, default="keep", metavar="DTYPE",
                        help="dtype of float tensors: keep (default: the stored dtypes), float16 or float32 "
                        "(or fp16, f16, fp32, f32)")
    parser.add_argument("--max-shard-size", metavar="SIZE", help="shard model.safetensors beyond SIZE (default 5GiB)")
    parser.add_argument("--force", action="store_true", help="replace DIR if export wrote it or it is empty (else refused)")
    _json_argument(parser, "the result")


def run_export(args: argparse.Namespace) -> int:
    from streamconv.tools.export import export

    result = export(args.output, args.target, dtype=args.dtype, max_shard_size=args.max_shard_size, force=args.force,
                    progress=progress.wanted(quiet=args.quiet or args.json))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(display.export_summary(result))
    return 0


def build_validate(parser: argparse.ArgumentParser) -> None:
    _output_argument(parser)
    parser.add_argument("--source", metavar="SOURCE", help="the original checkpoint (default: the one in metadata.json)")
    parser.add_argument("--min-cosine", type=float, metavar="X", help="minimum cosine per probe item, at most 1 "
                        "(overrides the dtype's)")
    parser.add_argument("--max-nmse", type=float, metavar="X", help="maximum NMSE per probe (overrides the dtype's)")
    _json_argument(parser, "every check, figure and limit")


def run_validate(args: argparse.Namespace) -> int:
    from streamconv.tools.validate import validate

    report = validate(args.output, args.source, min_cosine=args.min_cosine, max_nmse=args.max_nmse,
                      progress=progress.wanted(quiet=args.quiet or args.json)).to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    elif not args.quiet:
        print(display.validation_table(report, args.debug))
    return 0 if report["passed"] else VALIDATION_FAILED


def build_verify(parser: argparse.ArgumentParser) -> None:
    _output_argument(parser)
    _json_argument(parser, "the whole report")


def run_verify(args: argparse.Namespace) -> int:
    from streamconv.tools.verify import exit_code, verify

    report = verify(args.output)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(display.verify_summary(report))
    return exit_code(report)


def build_types(parser: argparse.ArgumentParser) -> None:
    """``types`` takes no argument of its own."""


def run_types(args: argparse.Namespace) -> int:
    from streamconv.plans import PLANS

    if not args.quiet:
        print(display.types_text(PLANS))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("convert", "convert a checkpoint to Parquet weights", build_convert, run_convert,
            "streamconv.pipeline.convert", "streamconv convert ./model -o ./model-parquet --dtype bf16 --max-file-size 2GB",
            "Convert a checkpoint (folder, .safetensors or .bin file, or hub repo id) into "
            f"OUTPUT/weights.parquet, metadata.json and the model's assets.\n\n{_SIZE}.", writes="output"),
    Command("inspect", "show a converted output's tensors and metadata", build_inspect, run_inspect,
            "streamconv.format.reader", "streamconv inspect ./model-parquet --source-names"),
    Command("export", "write a converted output back as a Hugging Face safetensors checkpoint", build_export,
            run_export, "streamconv.tools.export", "streamconv export ./model-parquet --to ./model-hf --max-shard-size 2GB",
            "Write OUTPUT as a checkpoint folder that Hugging Face libraries load: safetensors under the source "
            f"names, sharded when needed, with config.json and every asset.\n\n{_SIZE}.", writes="target"),
    Command("validate", "compare a converted output with its source (needs torch and transformers)", build_validate,
            run_validate, "streamconv.tools.validate", "streamconv validate ./model-parquet --source ./model",
            "Check that every stored tensor is named as the plan names it and equals the documented cast of its "
            "source, that every model tensor comes from the output, and that the model with the converted weights "
            "gives the original model's outputs within the stored dtype's limits. Exit 0 if every check passes, "
            "6 if one fails.", reads="output"),
    Command("verify", "check a converted output on its own: every chunk and file", build_verify, run_verify,
            "streamconv.tools.verify", "streamconv verify ./model-parquet",
            "Re-read OUTPUT without its source: every chunk's checksum and decoding, every file's size and sha256 "
            "against metadata.json, and its counts. Exit 0 if all is fine, 3 if anything is damaged."),
    Command("types", "list the model plans and what each detects", build_types, run_types, "streamconv.plans",
            "streamconv types"),
)


def command(name: str | None) -> Command | None:
    """The command called ``name``, if any."""
    return next((c for c in COMMANDS if c.name == name), None)
