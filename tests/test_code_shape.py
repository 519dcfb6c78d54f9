"""Habits that keep the code readable, checked: small modules, long functions explained, no family
names outside streamconv/plans/, no torch on the convert path."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_convert_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, streamconv, streamconv.cli, streamconv.pipeline.convert\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_converting_and_reading_never_import_pandas(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # pyarrow imports pandas, when it is installed, from calls such as pa.array(list): a few hundred
    # ms and tens of MiB in every conversion. A stand-in pandas records that it was asked for.
    fake = tmp_path / "site" / "pandas"
    fake.mkdir(parents=True)
    marker = tmp_path / "pandas-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('stand-in')\n")
    out = tmp_path / "out"
    code = (
        "import sys, streamconv\n"
        f"streamconv.convert({str(tiny_checkpoint)!r}, {str(out)!r}, force=True)\n"
        f"streamconv.load({str(out)!r}); list(streamconv.iter_tensors({str(out)!r}))\n"
        f"streamconv.verify({str(out)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(PACKAGE.parent)])}
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert (out / "weights.parquet").is_file()
    assert not marker.exists()
