"""The layout's directions, enforced: which package may import which, no import cycles, and a read
of an output that loads nothing of the writing side.

Every import counts, wherever it is written (inside functions too) and however (``import_module``
with a literal name as well).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from tests.conftest import write_safetensors

PACKAGE = Path(__file__).parents[1] / "streamconv"
#: Shared by every layer; they import only each other.
BASE = {"errors", "messages", "strict_json", "dtypes", "constants", "buffers", "_files", "_version", "units", "progress", "workers"}
#: What each package may import besides the base layer and itself: the pipeline's order. A tool
#: (export, verify, validate) works on a finished output and never runs a conversion; a conversion
#: may end with a validation, so pipeline/ sits above tools/.
ALLOWED = {
    "base": set(),
    "sources": set(),
    "stages": {"sources"},
    "plans": {"sources", "stages"},
    "format": set(),
    "tools": {"sources", "stages", "plans", "format"},
    "pipeline": {"sources", "stages", "plans", "format", "tools"},
    "cli": {"sources", "stages", "plans", "format", "tools", "pipeline"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    """``streamconv.format.reader`` -> ``format``; the top-level shared modules are ``base``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "top"
    return "base" if parts[1] in BASE else parts[1]


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists() or bool(list(path.parent.glob(path.name + ".*.so")))


def imports_of(path: Path) -> set[str]:
    """Every streamconv module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from streamconv.format import codec` imports the module streamconv.format.codec;
            # `from streamconv.format.reader import load` the module streamconv.format.reader
            submodules = {f"{node.module}.{alias.name}" for alias in node.names if is_module(f"{node.module}.{alias.name}")}
            found.update(submodules or {node.module})
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {name for name in found if name == "streamconv" or name.startswith("streamconv.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}


def test_every_import_follows_the_pipeline_order() -> None:
    wrong = []
    for module, imported in graph().items():
        here = layer(module)
        if here == "top":  # the package's lazy table and `python -m streamconv` reach everything
            continue
        for target in imported:
            there = layer(target)
            if there == "top" or (there != here and there != "base" and there not in ALLOWED[here]):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                # importing a package runs its __init__: a module importing its own package is no cycle
                # unless __init__ imports it back, which the edge list shows
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The check cannot pass by hiding an import in a function body."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from streamconv.pipeline.convert import convert\n    return convert\n")
    assert "streamconv.pipeline.convert" in imports_of(probe)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_reading_an_output_loads_nothing_of_the_writing_side(tmp_path: Path, dtype: str) -> None:
    """Nor any compiled code, but for an int8 output the reading side's own kernel (loaded at the
    first int8 chunk, where it was built)."""
    tensors = {"w": np.linspace(-1, 1, 128 * 128, dtype=np.float32).reshape(128, 128)}  # int8 quantizes it
    source = write_safetensors(tmp_path / "src" / "model.safetensors", tensors).parent
    out = tmp_path / "out"
    converted = streamconv.convert(source, out, dtype=dtype)  # here: only the reading below runs in a fresh process
    assert converted.stored_dtypes == {dtype: 1}
    allowed = {"float16": set(), "int8": {"streamconv.format._dequant"}}[dtype]
    script = (
        "import sys, streamconv\n"
        f"streamconv.load({str(out)!r}); list(streamconv.iter_tensors({str(out)!r})); streamconv.describe({str(out)!r})\n"
        f"assert streamconv.verify({str(out)!r}).passed\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('streamconv.'))\n"
        "bad = [m for m in loaded if m.split('.')[1] in {'sources', 'stages', 'pipeline', 'plans', 'cli'}\n"
        "       or m in {'streamconv.format.writer', 'streamconv.format.split_writer', 'streamconv.format.hashing'}\n"
        f"       or (not getattr(sys.modules[m], '__file__', '').endswith('.py') and m not in {sorted(allowed)!r})]\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_public_functions_stay_functions_once_their_modules_load() -> None:
    """No submodule is named like a public function, so importing it cannot rebind the name."""
    script = (
        "import types, streamconv, streamconv.pipeline.convert, streamconv.tools.export, streamconv.tools.verify, "
        "streamconv.tools.validate\n"
        "print([n for n in streamconv.__all__ if isinstance(getattr(streamconv, n), types.ModuleType)])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_option_bounds_are_the_same_everywhere(tmp_path: Path) -> None:
    """One owner (streamconv.constants) bounds workers, levels, chunk sizes and dtypes for every caller."""
    import pytest

    import streamconv
    from streamconv.errors import InvalidOptionError
    from streamconv.format.writer import WeightsWriter

    source = write_safetensors(tmp_path / "src" / "model.safetensors", {"w": np.ones(4, np.float32)}).parent
    for bad in (0, 257):
        with pytest.raises(InvalidOptionError, match="between 1 and 256"):
            streamconv.convert(source, tmp_path / "out", workers=bad)
        with pytest.raises(InvalidOptionError, match="between 1 and 256"):
            WeightsWriter(tmp_path / "w.parquet", workers=bad)
        with pytest.raises(InvalidOptionError, match="between 1 and 256"):
            streamconv.verify(tmp_path, workers=bad)
    for level in (-8, 23):
        with pytest.raises(InvalidOptionError, match="choose -7 to 22"):
            streamconv.convert(source, tmp_path / "out", level=level)
        with pytest.raises(InvalidOptionError, match="choose -7 to 22"):
            WeightsWriter(tmp_path / "w.parquet", level=level)
    with pytest.raises(InvalidOptionError, match="at least 1 byte"):
        list(streamconv.chunk(streamconv.open_checkpoint(source), chunk_size=0))
    with pytest.raises(InvalidOptionError, match="not a dtype"):
        list(streamconv.cast([], "float8"))
