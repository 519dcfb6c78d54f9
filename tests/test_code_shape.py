"""Habits that keep the code readable, checked: small modules, long functions explained, no family
names outside streamconv/plans/, and a command that imports only what it uses."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from tests.conftest import write_safetensors

PACKAGE = Path(__file__).parents[1] / "streamconv"
MAX_MODULE_LINES = 400
MAX_UNDOCUMENTED_FUNCTION_LINES = 60
FAMILY_WORDS = re.compile(r"\b(whisper|clip|siglip|bert|sentence[-_ ]transformers?)\b", re.IGNORECASE)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_400_lines() -> None:
    long = {p.relative_to(PACKAGE).as_posix(): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_long_functions_have_docstrings() -> None:
    undocumented = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_UNDOCUMENTED_FUNCTION_LINES and ast.get_docstring(node) is None:
                    undocumented.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert undocumented == []


def test_no_module_outside_plans_names_a_model_family() -> None:
    """Family knowledge lives in streamconv/plans/: code elsewhere (not its docstrings) names none."""
    offenders = []
    for path in modules():
        if path.parent.name == "plans":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if FAMILY_WORDS.search(node.value):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value[:60]!r}")
            elif isinstance(node, ast.Name) and FAMILY_WORDS.search(node.id):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.id}")
    assert offenders == []


HEAVY = ("ml_dtypes", "torch", "transformers", "tokenizers", "pandas")
#: Each runs in a fresh process; {src}, {bf16}, {minilm} and {out} are filled in. "program:" runs the
#: CLI as the program (``python -m streamconv``, its start-up included); the others are Python.
COMMANDS = {
    "convert float32 -> float16": "program: convert {src} -o {new} -q",
    # The real MiniLM: its tokenizer.json is copied, so transformers and tokenizers stay out.
    "convert a sentence-transformers model": "program: convert {minilm} -o {new} -q",
    "inspect": "program: inspect {out}",
    "verify": "program: verify {out}",
    "library: convert, load, iter_tensors, verify": (
        "import streamconv; streamconv.convert({src!r}, {new!r}); streamconv.load({out!r});"
        "list(streamconv.iter_tensors({out!r})); streamconv.verify({out!r});"
        "streamconv.ValidationReport; streamconv.validate"
    ),
    "convert bfloat16": "program: convert {bf16} -o {new} -q",
}
IMPORTS_OF = {"convert bfloat16": ["ml_dtypes"]}  # the others: none of HEAVY


@pytest.fixture(scope="module")
def float16_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A float32 checkpoint, a bfloat16 one, and the float16 output of the first."""
    import ml_dtypes

    folder = tmp_path_factory.mktemp("startup")
    weights = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    for name, tensors in (("f32", {"w": weights, "ids": np.arange(8)}), ("bf16", {"w": weights.astype(ml_dtypes.bfloat16)})):
        write_safetensors(folder / name / "model.safetensors", tensors)
        (folder / name / "config.json").write_text(json.dumps({"model_type": "tiny-test", "hidden_size": 16}))
    streamconv.convert(folder / "f32", folder / "out")
    return folder / "f32", folder / "bf16", folder / "out"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_imports_only_what_it_uses(command: str, float16_output: tuple[Path, Path, Path], minilm_path: Path,
                                            tmp_path: Path) -> None:
    """No ml_dtypes without a bfloat16 (0.4-0.8 s to import: docs/benchmarks.md, "Start-up"), and
    never torch, transformers or pandas. pyarrow imports pandas, when it is installed, from calls
    such as pa.array(list): a stand-in pandas on the path records that it was asked for."""
    src, bf16, out = float16_output
    fake = tmp_path / "site" / "pandas"
    fake.mkdir(parents=True)
    marker = tmp_path / "pandas-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('stand-in')\n")
    text = COMMANDS[command].format(src=str(src), bf16=str(bf16), minilm=str(minilm_path), out=str(out), new=str(tmp_path / "new"))
    if text.startswith("program: "):
        argv = ["streamconv", *text.removeprefix("program: ").split()]
        text = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_module('streamconv', run_name='__main__')"
    code = f"import atexit, sys; atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n{text}\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(PACKAGE.parent)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(IMPORTS_OF.get(command, [])), done.stdout
    assert not marker.exists()
    if "convert" in command:
        assert (tmp_path / "new" / "weights.parquet").is_file()
    if "sentence-transformers" in command:
        assert (tmp_path / "new" / "tokenizer.json").is_file()  # copied, not built
