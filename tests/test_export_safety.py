"""`export` writes only inside `--to`, replaces only what export wrote, never its own output or that
output's source, and leaves only checkpoints that load (docs/reliability.md, "What --force replaces"
and "Export writes only what loads").

Each bad case is checked on the command line (exit code, one line on stderr, no traceback, nothing
under the target name, nothing outside it) and from Python (the error class).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

import streamconv
from streamconv.cli.app import main
from streamconv.errors import FormatError, OutputExistsError, OutputRefusedError, UnsafeInputError
from streamconv.format.records import TensorInfo
from streamconv.format.staging import staging_path
from streamconv.tools import export_checks
from tests import models

REMOVE = "streamconv replaces only its own output or an empty folder, even with --force: remove it yourself or choose another --to"
KEEP = "which streamconv never replaces, even with --force: choose another --to"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny sentence-transformers checkpoint (root weights and a Dense module folder), converted."""
    root = tmp_path_factory.mktemp("st")
    source = models.sentence_transformer(root / "a" / "ck")
    return source, streamconv.convert(source, root / "out", dtype="keep").output_dir


@pytest.fixture
def copy(converted: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the converted output, to tamper with."""
    return Path(shutil.copytree(converted[1], tmp_path / "out"))


def export_cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int) -> str:
    """Run `streamconv export`; it must exit ``code`` with one line on stderr. Returns that line."""
    assert main(["export", *argv, "-q"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.rstrip("\n")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_metadata(out: Path, edit) -> None:
    path = out / "metadata.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))


def edit_column(out: Path, column: str, edit, kind: pa.DataType | None = None) -> None:
    """Rewrite one column of weights.parquet: ``edit(names, values)`` changes the list of values in place."""
    path = out / "weights.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    edit(table.column("name").to_pylist(), values)
    field = table.schema.field(column) if kind is None else pa.field(column, kind)
    pq.write_table(table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type)), path)


# --- the marker, and what --force replaces ---


def test_export_marks_what_it_wrote_and_force_replaces_only_that(
    converted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = converted[1]
    hf = tmp_path / "hf"
    assert main(["export", str(out), "--to", str(hf), "-q"]) == 0
    marker = json.loads((hf / "streamconv_export.json").read_text())
    assert (marker["format"], marker["format_version"], marker["output"]) == ("streamconv-export", 1, str(out.resolve()))
    listed = {f["path"] for f in marker["files"]}
    assert listed == set(snapshot(hf)) - {"streamconv_export.json"}
    assert {"model.safetensors", "2_Dense/model.safetensors", "modules.json"} <= listed
    assert load_file(hf / "2_Dense" / "model.safetensors")

    assert main(["export", str(out), "--to", str(hf), "-q", "--force", "--dtype", "float32"]) == 0  # its own: replaced
    assert json.loads((hf / "streamconv_export.json").read_text())["dtype"] == "float32"
    with pytest.raises(OutputExistsError):
        streamconv.export(out, hf)

    (hf / "notes.txt").write_text("mine")
    before = snapshot(hf)
    assert export_cli(capsys, str(out), "--to", str(hf), "--force", code=4) == (
        f"error: {hf}: holds 1 item streamconv did not write ('notes.txt'); {REMOVE}")
    assert snapshot(hf) == before
    # A convert output is not an export: export does not replace it.
    other = tmp_path / "other"
    shutil.copytree(out, other)
    line = export_cli(capsys, str(out), "--to", str(other), "--force", code=4)
    assert "and no streamconv_export.json of a streamconv export" in line
    with pytest.raises(OutputRefusedError, match="remove it yourself or choose another target$"):
        streamconv.export(out, other, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(out), "--to", str(empty), "-q", "--force"]) == 0
    assert (empty / "streamconv_export.json").is_file()


def test_export_never_replaces_its_output_or_that_output_s_source(
    converted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = converted
    before_source, before_out = snapshot(source), snapshot(out)
    recorded = "the checkpoint the output was converted from"
    for target, what in [
        (source, f"is {recorded}"),
        (source / "2_Dense", f"lies inside {recorded} ({str(source)!r})"),
        (source.parent, f"holds {recorded} ({str(source)!r})"),
        (out, "is the output being exported"),
        (out / "1_Pooling", f"lies inside the output being exported ({str(out)!r})"),
    ]:
        assert export_cli(capsys, str(out), "--to", str(target), "--force", code=4) == f"error: {target}: {what}, {KEEP}"
        with pytest.raises(OutputRefusedError, match="never replaces"):
            streamconv.export(out, target, force=True)
    assert snapshot(source) == before_source and snapshot(out) == before_out


# --- paths and names from the output's data ---


@pytest.mark.parametrize("path, problem", [
    ("ABSOLUTE", "which is not a plain relative path inside"),
    ("../../escape", "which is not a plain relative path inside"),
    (".", "the folder itself, where a file belongs"),
    ("", "which is not a plain relative path inside"),
    (5, "names a file by int, not by a path"),
])
def test_module_paths_from_metadata_stay_inside(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: object, problem: str
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.safetensors").write_bytes(b"another model's weights")
    value = str(victim) if path == "ABSOLUTE" else path

    def dense_at(metadata: dict) -> None:
        metadata["sentence_transformers"]["modules"][2]["path"] = value

    edit_metadata(copy, dense_at)
    hf = tmp_path / "deep" / "hf"
    line = export_cli(capsys, str(copy), "--to", str(hf), code=3)
    assert line.startswith(f"error: {copy / 'metadata.json'}: ") and problem in line, line
    with pytest.raises(UnsafeInputError):
        streamconv.export(copy, hf)
    assert not hf.exists() and not (tmp_path / "escape").exists()
    assert (victim / "model.safetensors").read_bytes() == b"another model's weights"


def test_asset_paths_from_metadata_stay_inside(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_metadata(copy, lambda m: m["assets"][0].update(path="../outside.json"))
    assert "which is not a plain relative path inside" in export_cli(capsys, str(copy), "--to", str(tmp_path / "hf"), code=3)
    assert not (tmp_path / "hf").exists()


def test_a_module_folder_named_like_a_file_written_is_refused(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_metadata(copy, lambda m: m["sentence_transformers"]["modules"][2].update(path="config.json"))
    line = export_cli(capsys, str(copy), "--to", str(tmp_path / "hf"), code=3)
    assert "export would write 'config.json/model.safetensors' inside 'config.json'" in line
    assert not (tmp_path / "hf").exists()


def test_reserved_and_duplicate_tensor_names_are_refused(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = tmp_path / "hf"
    names = streamconv.describe(copy)
    first, second = names[0].source_name, names[1].source_name

    def reserved(_: list, sources: list) -> None:
        sources[sources.index(first)] = "__metadata__"

    edit_column(copy, "source_name", reserved)
    line = export_cli(capsys, str(copy), "--to", str(hf), code=3)
    assert "a tensor would be named '__metadata__' in model.safetensors, a name safetensors keeps" in line
    with pytest.raises(FormatError, match="__metadata__"):
        streamconv.export(copy, hf)

    def duplicate(_: list, sources: list) -> None:
        sources[:] = [second if s == "__metadata__" else s for s in sources]

    edit_column(copy, "source_name", duplicate)
    line = export_cli(capsys, str(copy), "--to", str(hf), code=3)
    assert f"have one source name {second!r}; a checkpoint holds each name once" in line
    with pytest.raises(FormatError, match="one source name"):
        streamconv.export(copy, hf)
    assert not hf.exists()


def test_float_and_overflowing_shapes_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    hf = tmp_path / "hf"

    def huge(names: list, shapes: list) -> None:  # an empty tensor: product 0, but 2**124 on the way
        shapes[names.index("empty")] = [2**62, 2**62, 0]

    edit_column(out, "shape", huge)
    line = export_cli(capsys, str(out), "--to", str(hf), code=3)
    assert "tensor 'empty' has the shape [4611686018427387904, 4611686018427387904, 0], whose size does not fit" in line
    with pytest.raises(FormatError, match="does not fit in 64 bits"):
        streamconv.export(out, hf)

    def floats(names: list, shapes: list) -> None:
        shapes[:] = [[float(d) for d in s] for s in shapes]
        shapes[names.index("empty")] = [0.0, 4.0]

    edit_column(out, "shape", floats, pa.list_(pa.float64()))
    line = export_cli(capsys, str(out), "--to", str(hf), code=3)
    assert "shape" in line  # refused by the reader, or by export's check
    with pytest.raises(FormatError, match="shape"):
        streamconv.export(out, hf)
    assert not hf.exists()


@pytest.mark.parametrize("shape, problem", [
    ((2.0, 3.0), "has the shape [2.0, 3.0], not a list of non-negative integers"),
    ((True, 3), "has the shape [True, 3], not a list of non-negative integers"),
    ((-1, 3), "has the shape [-1, 3], not a list of non-negative integers"),
    ((0, 2**62, 2**62), "whose size does not fit in 64 bits"),
    ((2**61,), "whose size does not fit in 64 bits"),  # 2**61 elements of 8 bytes
])
def test_every_shape_check(tmp_path: Path, shape: tuple, problem: str) -> None:
    info = TensorInfo("t", "t", "float32", "float32", shape, 1, 0, tmp_path)
    with pytest.raises(FormatError, match=re.escape(problem)):
        export_checks.check_tensors(tmp_path, [info])
    fits = TensorInfo("t", "t", "float32", "float32", (0, 2**30, 2**20), 1, 0, tmp_path)
    export_checks.check_tensors(tmp_path, [fits])


# --- leftovers ---


def test_export_removes_what_killed_exports_left(converted: tuple[Path, Path], tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = staging_path(hf, dead.pid)
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"partial")
    done = subprocess.run([sys.executable, "-m", "streamconv", "export", str(converted[1]), "--to", str(hf)],
                          capture_output=True, text=True, env={**os.environ, "STREAMCONV_DISABLE_PROGRESS_BARS": "1"})
    assert done.returncode == 0, done.stderr
    assert f"removed {left.name}, left by an interrupted run" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    left.mkdir()
    result = streamconv.export(converted[1], hf, force=True)
    assert result.warnings == [f"removed {left.name}, left by an interrupted run"] and not left.exists()
