"""Hostile converted outputs (issue 16, items 2-4, 6, 7 and 9 on the reading side).

An output is input too: symlinks leading out, FIFOs where files belong, chunks and row counts that
declare more than the file holds, metadata.json of the wrong types, Parquet columns of the wrong
type or null, byte damage, and a split output replaced while it is read. Each ends in one line and
its exit code, never a hang, another exception or a huge allocation (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamconv
from streamconv.errors import (
    FormatError,
    OutOfMemoryError,
    OutputChangedError,
    StreamconvError,
    UnsafeInputError,
)
from streamconv.format import reader
from streamconv.format.schema import SCHEMA
from tests.conftest import CliRun, fuzz_cases, random_checkpoint, run_cli

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}
FUZZ = settings(max_examples=fuzz_cases(60), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def cli(*args: str) -> CliRun:
    """The command in this process (tests.conftest.run_cli)."""
    return run_cli(args)


def cli_process(*args: str, timeout: float) -> CliRun:
    """The command as a process, for a test that a command ends (a hang then fails at ``timeout``)."""
    done = subprocess.run([sys.executable, "-m", "streamconv", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)
    return CliRun(done.returncode, done.stdout, done.stderr)


def one_error_line(done: CliRun, code: int) -> str:
    assert done.code == code, (done.code, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("src"), 4, (32, 512), seed=5, name="layer.{}.weight",
                             config='{"model_type": "tiny-test"}')


@pytest.fixture(scope="module")
def made(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A single-file output and two split outputs of different data (16 KiB chunks)."""
    root = tmp_path_factory.mktemp("made")
    streamconv.convert(source, root / "single", chunk_size=16 * 1024)
    streamconv.convert(source, root / "split", chunk_size=16 * 1024, max_file_size="40KiB")
    streamconv.convert(source, root / "other", chunk_size=16 * 1024, max_file_size="40KiB", dtype="bfloat16")
    return {"single": root / "single", "split": root / "split", "other": root / "other"}


def copy(made: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[name], tmp_path / name))


def rewrite(path: Path, change: Any) -> None:
    """Rewrite a weights file with ``change(table)``, keeping its schema metadata (the streamconv keys)."""
    table = pq.read_table(path)
    meta = table.schema.metadata
    table = change(table)
    pq.write_table(table.replace_schema_metadata(meta), path, use_dictionary=False, compression="none")


# --- item 2: symlinks leading out; item 3: FIFOs and folders where a file belongs ---


@pytest.mark.parametrize("name", ["single", "split"])
def test_weights_linked_outside_are_refused_by_every_reader(made: dict[str, Path], tmp_path: Path, name: str) -> None:
    out = copy(made, name, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = out / "weights.parquet" if name == "single" else sorted(out.glob("weights-*.parquet"))[1]
    shutil.move(victim, outside / victim.name)
    victim.symlink_to(outside / victim.name)
    for read in (streamconv.load, streamconv.describe, lambda p: list(streamconv.iter_tensors(p))):
        with pytest.raises(UnsafeInputError, match="outside"):
            read(out)
    for args in (["inspect", str(out)], ["export", str(out), "--to", str(tmp_path / "hf")]):
        assert "leads through a symlink" in one_error_line(cli(*args), 3)
    assert not (tmp_path / "hf").exists()
    report = streamconv.verify(out)  # verify reports it among its problems, and hashes nothing outside
    assert not report.passed and all("leads through a symlink" in p for p in report.problems)
    assert [f["sha256"] for f in report.files if f["path"] == victim.name] == [None]
    done = cli("verify", str(out))
    assert done.code == 3 and "leads through a symlink" in done.stdout


def test_an_asset_linked_outside_is_neither_hashed_nor_copied(made: dict[str, Path], tmp_path: Path) -> None:
    out = copy(made, "single", tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (out / "config.json").unlink()
    (out / "config.json").symlink_to(secret)
    report = streamconv.verify(out)
    assert not report.passed and any("leads through a symlink" in p for p in report.problems)
    assert all(f["sha256"] is None for f in report.files if f["path"] == "config.json")
    assert "leads through a symlink" in one_error_line(cli("export", str(out), "--to", str(tmp_path / "hf")), 3)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("where", ["metadata.json", "weights.parquet", "part"])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_where_a_file_belongs_is_refused_at_once(made: dict[str, Path], tmp_path: Path,
                                                                  where: str, kind: str) -> None:
    out = copy(made, "split" if where == "part" else "single", tmp_path)
    path = sorted(out.glob("weights-*.parquet"))[0] if where == "part" else out / where
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    words = f"is {'a FIFO' if kind == 'fifo' else 'a folder'}, where a file belongs"
    # A FIFO opened for reading would block forever: its commands run in a process of their own, with
    # a timeout, so that a regression fails rather than hangs the suite.
    run = (lambda *args: cli_process(*args, timeout=30)) if kind == "fifo" else cli
    assert words in one_error_line(run("inspect", str(out)), 3)
    done = run("verify", str(out))  # verify reports it among everything else it checks
    assert done.code == 3 and words in done.stdout, done.stdout + done.stderr


# --- item 4: memory follows the real data ---


def _one_chunk_file(path: Path, elements: int) -> None:
    """A weights file of one float32 tensor of ``elements`` zeros declared as one chunk of a few bytes."""
    row = {"name": "t", "source_name": "t", "dtype": "float32", "source_dtype": "float32", "shape": [elements],
           "chunk_index": 0, "chunk_count": 1, "element_offset": 0, "element_count": elements,
           "data": b"\0" * 36, "data_bytes": 36, "data_xxh3": 0}
    schema = SCHEMA.with_metadata({"streamconv.format_version": "3", "streamconv.compression": "zstd"})
    pq.write_table(pa.Table.from_pylist([row], schema=schema), path)


def test_a_chunk_larger_than_the_recorded_chunk_size_is_refused_before_allocation(made: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    out = copy(made, "single", tmp_path)
    _one_chunk_file(out / "weights.parquet", 1 << 28)  # 1 GiB of float32 in a file of a few KB
    with pytest.raises(FormatError, match="more than a chunk of this output holds"):
        streamconv.load(out)
    done = cli("verify", str(out))
    assert done.code == 3 and "more than a chunk of this output holds (16,384 bytes)" in done.stdout
    bare = tmp_path / "bare.parquet"  # no metadata.json: the cap of constants.MAX_CHUNK_BYTES
    _one_chunk_file(bare, 1 << 27)
    with pytest.raises(FormatError, match="268,435,456 bytes"):
        streamconv.describe(bare)


def test_row_counts_are_bounded_by_what_the_file_can_hold(tmp_path: Path) -> None:
    rows = 200_000  # empty chunks, compressed and dictionary-encoded to almost nothing
    table = pa.table({"name": ["t"] * rows, "source_name": ["t"] * rows, "dtype": ["float16"] * rows,
                      "source_dtype": ["float16"] * rows, "shape": [[0]] * rows, "chunk_index": list(range(rows)),
                      "chunk_count": [rows] * rows, "element_offset": [0] * rows, "element_count": [0] * rows,
                      "data": [b""] * rows, "data_bytes": [0] * rows, "data_xxh3": [0] * rows},
                     schema=SCHEMA.with_metadata({"streamconv.format_version": "3", "streamconv.compression": "none"}))
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 32 * rows
    with pytest.raises(FormatError, match=r"declares 200,000 rows, more than its .* bytes can hold"):
        streamconv.describe(path)


def test_verify_under_a_memory_limit_is_out_of_memory_never_damage(made: dict[str, Path]) -> None:
    """RLIMIT_DATA of 150 to 200 MiB: a sound output passes or is exit 8 in one line, never exit 3 or a crash."""
    child = ("import resource, sys\nlimit = int(sys.argv[2]) << 20\n"
             "resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))\n"
             "from streamconv.cli.app import main\nsys.exit(main(['verify', sys.argv[1]]))\n")
    for limit in (150, 175, 200):
        for out in (made["single"], made["split"]):
            done = subprocess.run([sys.executable, "-c", child, str(out), str(limit)], capture_output=True,
                                  text=True, env={**ENV, "OPENBLAS_NUM_THREADS": "1"}, timeout=60)
            assert done.returncode in (0, 8), (limit, done.returncode, done.stdout, done.stderr)
            if done.returncode == 8:
                assert "memory ran out" in one_error_line(done, 8)


@pytest.mark.parametrize("failure", [MemoryError(), pa.ArrowMemoryError("malloc of size 1110208 failed"),
                                     pa.ArrowException("Failed to launch worker thread"),
                                     RuntimeError("can't start new thread")])
def test_memory_failures_are_out_of_memory_never_damage(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                       failure: Exception) -> None:
    """Each way an allocation fails, where verify reads a row group and where it decodes a chunk."""
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(pq.ParquetFile, "read_row_group", fail)
        with pytest.raises(OutOfMemoryError, match="memory ran out while"):
            streamconv.verify(made["split"])
    with monkeypatch.context() as patch:
        patch.setattr("streamconv.format.codec.decode_into", fail)
        if isinstance(failure, MemoryError):
            with pytest.raises(OutOfMemoryError, match="memory ran out while decoding tensor"):
                streamconv.verify(made["single"])
            with pytest.raises(OutOfMemoryError, match="memory ran out while decoding tensor"):
                streamconv.load(made["single"])
    with monkeypatch.context() as patch:
        patch.setattr("streamconv.format.recycler.Recycler.take", fail)
        if isinstance(failure, MemoryError):
            with pytest.raises(OutOfMemoryError, match="memory ran out while allocating tensor"):
                streamconv.load(made["split"])


def test_out_of_memory_is_its_own_error() -> None:
    error = OutOfMemoryError(Path("out"), "decoding tensor 'a'", 3 << 20)
    assert isinstance(error, MemoryError) and error.exit_code == 8
    assert str(error).startswith("out: memory ran out while decoding tensor 'a' (an allocation of 3.0 MiB failed)")
    assert "\n" not in str(error)


# --- item 6: one reader sees one output ---


def test_a_part_swapped_between_the_index_and_the_read_is_read_again(made: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out, other = copy(made, "split", tmp_path), made["other"]
    expected = streamconv.load(out)
    part = sorted(out.glob("weights-*.parquet"))[1]
    kept = part.read_bytes()
    swaps = []

    def swap_once(listed: Any) -> None:  # --force replacing the output, exactly between the two reads
        if not swaps:
            shutil.copyfile(other / part.name, part)
        else:
            part.write_bytes(kept)
        swaps.append(part.name)

    monkeypatch.setattr(reader, "_before_parts", swap_once)
    got = streamconv.load(out)
    assert len(swaps) == 2 and got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in got)

    monkeypatch.setattr(reader, "_before_parts", lambda listed: shutil.copyfile(other / part.name, part))
    with pytest.raises(OutputChangedError) as caught:
        streamconv.describe(out)
    assert str(caught.value).endswith("; read it again") and "the output changed while it was being read" in str(caught.value)
    assert caught.value.exit_code == 3


def test_a_part_of_the_same_size_from_another_output_is_told_by_its_rows(made: dict[str, Path], tmp_path: Path) -> None:
    out = copy(made, "split", tmp_path)
    index = json.loads((out / "weights.parquet.index.json").read_text())
    assert all(len(f["chunks_xxh3"]) == 16 for f in index["files"])
    first = out / index["files"][0]["path"]
    index["files"][0]["chunks_xxh3"] = "0" * 16  # what another output's first file would record
    (out / "weights.parquet.index.json").write_text(json.dumps(index))
    with pytest.raises(OutputChangedError, match=f"{first.name} holds other rows than the split index records"):
        streamconv.describe(out)
    for entry in index["files"]:  # an index of an older streamconv: no chunks_xxh3, still read
        del entry["chunks_xxh3"]
    (out / "weights.parquet.index.json").write_text(json.dumps(index))
    assert len(streamconv.describe(out)) == 4


# --- item 7: every hostile output is one documented line ---


@pytest.mark.parametrize(("content", "words"), [
    (b"[" * 200 + b"]" * 200, "nested more than 127 levels deep"),
    (b'{"chunk_size": "2MiB"}', "metadata key 'chunk_size' must be a non-negative integer"),
    (b'{"assets": [{"path": 7}]}', "metadata key 'assets[0].path' must be a string"),
    (b'{"files": {"path": "weights.parquet"}}', "metadata key 'files' must be a list of objects"),
    (b'{"source": {"architectures": ["Bert", null]}}', "'source.architectures[1]' must be a string"),
    (b'{"model_type": "\xff\xfe"}', "not UTF-8 text"),
    (b"[]", "metadata is not a JSON object"),
])
def test_hostile_metadata_is_one_line(made: dict[str, Path], tmp_path: Path, content: bytes, words: str) -> None:
    out = copy(made, "single", tmp_path)
    (out / "metadata.json").write_bytes(content)
    with pytest.raises(FormatError, match=words.replace("[", r"\[").replace("]", r"\]")):
        streamconv.read_metadata(out)
    assert words in one_error_line(cli("inspect", str(out)), 3)
    assert words in one_error_line(cli("export", str(out), "--to", str(tmp_path / "hf")), 3)
    assert len(streamconv.load(out)) == 4  # the weights need no metadata.json: chunks are held to the cap


@pytest.mark.parametrize(("change", "words"), [
    (lambda t: t.set_column(5, "chunk_index", pa.array([str(v) for v in t["chunk_index"].to_pylist()])),
     "column 'chunk_index' holds string, not int32"),
    (lambda t: t.set_column(8, "element_count", pa.array([None] + t["element_count"].to_pylist()[1:], pa.int64())),
     "column 'element_count' holds a null"),
    (lambda t: t.set_column(4, "shape", pa.array([[None]] + t["shape"].to_pylist()[1:], pa.list_(pa.int64()))),
     "column 'shape' holds a null"),
    (lambda t: t.drop_columns(["data_xxh3"]), "has no column 'data_xxh3'"),
    (lambda t: t.set_column(0, "name", pa.array(["x\n"] + t["name"].to_pylist()[1:])),
     "tensor 'layer.0.weight': chunk 1 out of order or missing"),
])
def test_hostile_columns_are_one_line(made: dict[str, Path], tmp_path: Path, change: Any, words: str) -> None:
    out = copy(made, "single", tmp_path)
    rewrite(out / "weights.parquet", change)
    with pytest.raises(FormatError, match=words):
        streamconv.load(out)
    assert words in one_error_line(cli("inspect", str(out)), 3)


def test_a_null_in_the_data_column_is_damage_not_a_crash(made: dict[str, Path], tmp_path: Path) -> None:
    out = copy(made, "single", tmp_path)
    rewrite(out / "weights.parquet",
            lambda t: t.set_column(9, "data", pa.array([None] + t["data"].to_pylist()[1:], pa.large_binary())))
    with pytest.raises(FormatError, match="column 'data' holds a null"):
        streamconv.load(out)
    done = cli("verify", str(out))
    assert done.code == 3 and "column 'data' holds a null" in done.stdout


# --- item 9: the corpus, fuzzed ---

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_KEYS = ["format_version", "chunk_size", "files", "assets", "source", "parts", "model_type", "tensor_count",
         "sentence_transformers", "compression", "level", "warnings"]


def _reads(out: Path) -> None:
    """Every reader on ``out``: each must succeed or raise a StreamconvError of one line."""
    for read in (streamconv.describe, streamconv.load, streamconv.verify, streamconv.read_metadata):
        try:
            read(out)
        except StreamconvError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)


@FUZZ
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, min_size=1, max_size=3))
def test_fuzzed_metadata_ends_in_a_project_error(made: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                changes: dict[str, Any]) -> None:
    out = tmp_path_factory.mktemp("meta") / "out"
    shutil.copytree(made["single"], out)
    metadata = json.loads((out / "metadata.json").read_text())
    metadata.update(changes)
    (out / "metadata.json").write_text(json.dumps(metadata))
    _reads(out)


_VALUES = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=4), st.binary(max_size=8),
                    st.lists(st.integers(-5, 2**40), max_size=3))


@FUZZ
@given(st.sampled_from([f.name for f in SCHEMA]), st.integers(0, 40), _VALUES, st.booleans())
def test_fuzzed_columns_end_in_a_project_error(made: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                              column: str, row: int, value: Any, retype: bool) -> None:
    """One value of one column replaced (a null, another type, another value), or the whole column retyped."""
    out = tmp_path_factory.mktemp("cols") / "out"
    shutil.copytree(made["single"], out)

    def change(table: pa.Table) -> pa.Table:
        values = table[column].to_pylist()
        values[row % len(values)] = value
        try:
            array = pa.array(values) if retype else pa.array(values, table.schema.field(column).type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            array = pa.array([None if v is value else v for v in values], table.schema.field(column).type)
        return table.set_column(table.schema.get_field_index(column), column, array)

    rewrite(out / "weights.parquet", change)
    _reads(out)


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
       st.sampled_from(["weights.parquet", "metadata.json", "part"]))
def test_fuzzed_byte_damage_ends_in_a_project_error(made: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                   flips: list[tuple[float, int]], where: str) -> None:
    out = tmp_path_factory.mktemp("bytes") / "out"
    shutil.copytree(made["split" if where == "part" else "single"], out)
    path = sorted(out.glob("weights-*.parquet"))[-1] if where == "part" else out / where
    data = bytearray(path.read_bytes())
    for at, mask in flips:
        data[int(at * len(data))] ^= mask
    path.write_bytes(bytes(data))
    _reads(out)
