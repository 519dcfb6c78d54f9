"""The command line's entry: build the parsers from the command table, run one, map errors to exit codes.

The commands themselves (arguments, handler, module) are rows of :data:`streamconv.cli.commands.COMMANDS`.
``streamconv convert`` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from streamconv._version import __version__
from streamconv.cli.commands import COMMANDS, Command, command
from streamconv.cli.interrupts import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    Terminated,
    interrupt_line,
    interrupts_held,
    output_identity,
    redeliver_swallowed,
    settle,
    sigterm_raises,
)
from streamconv.cli.startup import program_start
from streamconv.errors import OutOfMemoryError, StreamconvError
from streamconv.messages import NOVALUE, one_line

__all__ = ["EPILOG", "build_parser", "main"]

#: The end of every ``--help``: an example, the environment variables, the exit codes.
EPILOG = """\
example:
  {example}

environment:
  STREAMCONV_DISABLE_PROGRESS_BARS=1, HF_HUB_DISABLE_PROGRESS_BARS=1
      hide every progress bar (bars are shown only when stderr is a terminal, and never with -q)
  HF_HOME, HF_HUB_OFFLINE=1
      the Hugging Face cache that hub sources are read from; offline, from the cache alone

exit codes:
  0 success            1 unexpected error (rerun with --debug)   2 not found, or a bad option
  3 damaged input      4 output problem (exists, not writable, disk full)
  5 missing optional dependency      6 validation failed      8 out of memory
  130 interrupted      143 terminated
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _wrap(text: str) -> str:
    """A description for RawDescriptionHelpFormatter: each paragraph filled to 78 columns."""
    return "\n\n".join(textwrap.fill(p, width=78) for p in text.split("\n\n"))


def build_parser() -> argparse.ArgumentParser:
    """The ``streamconv`` argument parser, one subparser per row of the command table."""
    parser = _Parser(
        prog="streamconv",
        description="Stream Hugging Face checkpoints into compressed Parquet weights.",
        epilog=EPILOG.format(example="streamconv convert ./model -o ./model-parquet"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary (errors still show)")
    parser.add_argument("--version", action="version", version=f"streamconv {__version__}")
    # Given after the command too. SUPPRESS: a command without them keeps what the main parser set
    # (a default there would overwrite `streamconv --debug validate`'s True with False).
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar and no summary; errors still go to stderr, --json still prints")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        sub = commands.add_parser(
            cmd.name, parents=[common], help=cmd.help, description=_wrap(cmd.description or cmd.help),
            epilog=EPILOG.format(example=cmd.example), formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS if cmd.name == "convert" else None,
        )
        cmd.build(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success).

    Without ``argv`` it is the program (``streamconv``, ``python -m streamconv``) and starts as
    one (:func:`streamconv.cli.startup.program_start`); with ``argv`` it leaves the process alone.
    """
    args: argparse.Namespace | None = None
    cmd: Command | None = None
    before = None
    parser: argparse.ArgumentParser | None = None
    try:
        with sigterm_raises():
            if argv is None:
                redeliver_swallowed()
                _safe_streams()
            with interrupts_held():  # start-up: parse, and import numpy, pyarrow... (see there)
                parser = build_parser()
                args = _parse(parser, argv)
                cmd = command(args.command)
                before = output_identity(_target(cmd, args))  # with args, so an interrupt line can compare
                uses_blas = args.command == "validate" or getattr(args, "validate", False)
                with program_start(uses_blas) if argv is None else contextlib.nullcontext():
                    if cmd is not None:
                        importlib.import_module(cmd.module)
            if cmd is None:
                parser.print_help(sys.stderr)  # a usage error: stderr, exit 2
                return 2
            code = cmd.run(args)
            if argv is None:
                settle()
            return code
    except BrokenPipeError:  # `streamconv inspect OUT | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see sigterm_raises)
        if argv is None:
            settle()  # a second Ctrl-C while the line is printed: no traceback
        print(_folded(_interrupt_line(exc, cmd, args, before)), file=sys.stderr)
        return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT
    except Exception as exc:  # every error becomes one line; --debug shows the traceback
        if args is not None and args.debug:
            raise
        if argv is None:
            settle()
        no_room = ((isinstance(exc, ImportError) and "failed to map segment" in str(exc))  # a library under `ulimit -v`
                   or (isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)))
        if (isinstance(exc, MemoryError) or no_room) and not isinstance(exc, StreamconvError):
            doing = f"running `streamconv {args.command}`" if args is not None and args.command else "starting"
            exc = OutOfMemoryError(None, doing)
        print(_folded(f"error: {_one_line(exc, parser or build_parser())}"), file=sys.stderr)
        return exc.exit_code if isinstance(exc, StreamconvError) else 1


def _folded(line: str) -> str:
    """``line`` kept on one line: a line break in a path it names (a folder called ``a\\nb``) as an escape."""
    return line.replace("\r", "\\r").replace("\n", "\\n")


def _safe_streams() -> None:
    """Print what UTF-8 cannot hold as escapes, not as an error: a path that is not UTF-8 reaches
    Python as lone surrogates, and a summary naming it would end in UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # replaced by a caller, or closed
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; a flag no parser knows is an error of the command it was given to, naming a close one."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = _subparsers(parser).get(args.command, parser)
        flags = [s for action in sub._actions for s in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def _target(cmd: Command | None, args: argparse.Namespace) -> str | None:
    """The folder ``cmd`` writes, as given (None for a dry run or a command that writes nothing)."""
    if cmd is None or cmd.writes is None or getattr(args, "dry_run", False):
        return None
    return getattr(args, cmd.writes, None) or None


def _interrupt_line(exc: BaseException, cmd: Command | None, args: argparse.Namespace | None, before: Any) -> str:
    if cmd is None or args is None:
        return interrupt_line(exc)
    read = getattr(args, cmd.reads, None) if cmd.reads else None
    stopped = f"`streamconv {cmd.name} {read}`" if read else None
    return interrupt_line(exc, _target(cmd, args), before, stopped)


def _one_line(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    if isinstance(exc, StreamconvError):
        return exc.render(_flag_labeller(parser))
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions"
    text = one_line(str(exc)) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {text}; rerun with --debug and report it"


def _flag_labeller(parser: argparse.ArgumentParser) -> Callable[[str, Any], str]:
    """``label(name, value)`` for error messages: an option as its flag, ``--level 5``, ``--force``."""
    flags: dict[str, str] = {}
    for sub in [parser, *_subparsers(parser).values()]:
        for action in sub._actions:
            if action.option_strings:
                flags.setdefault(action.dest, max(action.option_strings, key=len))

    def label(name: str, value: Any) -> str:
        flag = flags.get(name, name)
        if value is NOVALUE or value is True:
            return flag
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        return f"{flag} {value}"

    return label


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
