"""`streamconv verify` and damaged outputs (docs/reliability.md, "Integrity").

verify re-reads an output on its own and names every damaged tensor and every mismatch with
metadata.json; the readers raise FormatError for damaged data, never garbage or another exception.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamconv
from streamconv.errors import FormatError, NotConvertedError
from tests.conftest import CliRun, all_dtype_tensors, fuzz_cases, run_cli, write_safetensors


def run_verify(out: Path, *extra: str) -> CliRun:
    return run_cli(["verify", str(out), *extra])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of every dtype plus three float tensors of several chunks each (64 KiB chunks)."""
    folder = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(1)
    tensors = {**all_dtype_tensors(), **{f"layer{i}.weight": rng.standard_normal((64, 600), dtype=np.float32)
                                         for i in range(3)}}
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    return folder


def convert(small: Path, out: Path, **options) -> Path:
    streamconv.convert(small, out, chunk_size=64 * 1024, dtype="keep", **options)
    return out


def flip(path: Path, position: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def chunk_position(path: Path, name: str, chunk: int) -> int:
    """A byte inside the stored data of one chunk (found by its bytes: the data column is not compressed)."""
    table = pq.read_table(path, columns=["name", "chunk_index", "data"])
    row = next(i for i, (n, c) in enumerate(zip(table["name"].to_pylist(), table["chunk_index"].to_pylist()))
               if n == name and c == chunk)
    payload = table["data"][row].as_py()
    return path.read_bytes().index(payload) + len(payload) // 2


def test_a_sound_output_passes(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out")
    report = streamconv.verify(out)
    assert report.passed and report.damaged == {} and report.problems == [] and report.unchecked == []
    assert report.tensor_count == 15 and report.format_version == 3
    assert report.chunk_count == json.loads((out / "metadata.json").read_text())["chunk_count"] > 15
    assert {f["kind"] for f in report.files} == {"weights", "asset"} and all(f["ok"] for f in report.files)
    done = run_verify(out)
    assert done.code == 0, done.stderr
    assert ": ok: 15 tensors" in done.stdout
    done = run_verify(out, "--json")
    assert done.code == 0 and json.loads(done.stdout)["passed"] is True


def test_every_damaged_tensor_is_named(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out")
    weights = out / "weights.parquet"
    for name, chunk in [("layer0.weight", 1), ("layer2.weight", 0), ("layer2.weight", 2)]:
        flip(weights, chunk_position(weights, name, chunk), bit=3)
    report = streamconv.verify(out)
    assert not report.passed
    assert sorted(report.damaged) == ["layer0.weight", "layer2.weight"]
    assert len(report.damaged["layer2.weight"]) == 2
    assert "chunk 1 is damaged (checksum mismatch)" in report.damaged["layer0.weight"][0]
    assert report.problems == ["weights.parquet: sha256 differs from metadata.json"]
    done = run_verify(out)
    assert done.code == 3
    assert "DAMAGED" in done.stdout and "layer0.weight" in done.stdout and "layer2.weight" in done.stdout
    assert json.loads(run_verify(out, "--json").stdout)["damaged"].keys() == {"layer0.weight", "layer2.weight"}
    with pytest.raises(FormatError, match="layer0.weight.*chunk 1 is damaged"):
        streamconv.load(out)


def test_metadata_and_files_disagreeing_are_reported(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out")
    meta = json.loads((out / "metadata.json").read_text())
    meta["tensor_count"] += 1
    meta["parameter_count"] -= 1
    meta["files"][0]["bytes"] += 1
    (out / "metadata.json").write_text(json.dumps(meta))
    (out / "config.json").unlink()
    report = streamconv.verify(out)
    assert report.damaged == {}
    problems = "\n".join(report.problems)
    assert "tensor_count 16, the weights hold 15" in problems
    assert "parameter_count" in problems
    assert "bytes, metadata.json says" in problems
    assert "config.json: listed in metadata.json but missing" in problems
    assert run_verify(out).code == 3


def test_a_damaged_table_of_contents_or_missing_pieces_are_reported(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out")
    (out / "weights.parquet").write_bytes((out / "weights.parquet").read_bytes()[:-100])  # footer gone
    report = streamconv.verify(out)
    assert not report.passed and any("not a readable Parquet file" in p for p in report.problems)
    (out / "metadata.json").unlink()
    assert "metadata.json is missing" in streamconv.verify(out).problems
    shutil.rmtree(out)
    out.mkdir()
    with pytest.raises(NotConvertedError):
        streamconv.verify(out)
    assert run_verify(out).code == 2


def test_split_outputs_are_checked_file_by_file(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out", max_file_size=100 * 1024)
    report = streamconv.verify(out)
    assert report.passed, report
    assert len([f for f in report.files if f["kind"] == "weights"]) >= 4  # the parts and their index
    second = sorted(out.glob("weights-*.parquet"))[1]
    name = pq.read_table(second, columns=["name"])["name"][0].as_py()
    chunk = pq.read_table(second, columns=["chunk_index"])["chunk_index"][0].as_py()
    flip(second, chunk_position(second, name, chunk))
    report = streamconv.verify(out)
    assert list(report.damaged) == [name] and second.name in report.damaged[name][0]
    second.unlink()
    report = streamconv.verify(out)
    assert any(f"{second.name}: listed in metadata.json but missing" in p for p in report.problems)


def make_format_1(out: Path) -> None:
    """Rewrite a compression-none output as format 1 wrote it: no checksum columns, no "files"."""
    path = out / "weights.parquet"
    table = pq.read_table(path).drop_columns(["data_bytes", "data_xxh3"])
    meta = {**table.schema.metadata, b"streamconv.format_version": b"1"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    metadata = json.loads((out / "metadata.json").read_text())
    del metadata["files"]
    metadata["format_version"] = 1
    (out / "metadata.json").write_text(json.dumps(metadata))


def test_format_1_is_read_and_says_what_it_could_not_check(small: Path, tmp_path: Path) -> None:
    out = convert(small, tmp_path / "out", compression="none")
    make_format_1(out)
    report = streamconv.verify(out)
    assert report.passed and report.format_version == 1
    assert "format 1: chunks have no checksums; decoded sizes only" in report.unchecked
    assert any("lists no weights files" in u for u in report.unchecked)
    done = run_verify(out)
    assert done.code == 0 and "not checked: format 1" in done.stdout
    # Format 1 cannot see a flipped bit, but it sees a chunk of the wrong size.
    table = pq.read_table(out / "weights.parquet")
    data = table["data"].to_pylist()
    data[3] = data[3][:-2]
    table = table.set_column(table.schema.get_field_index("data"), "data", pa.array(data, pa.large_binary()))
    pq.write_table(table, out / "weights.parquet")
    name = table["name"][3].as_py()
    assert list(streamconv.verify(out).damaged) == [name]


def test_verify_is_the_function_once_its_module_is_imported() -> None:
    import streamconv.tools.verify as module  # noqa: F401  (binds the submodule on the package)

    assert callable(streamconv.verify) and streamconv.verify.__name__ == "verify"
    assert streamconv.VerifyReport.__module__ == "streamconv.tools.verify"


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_random_bit_flips_and_truncations_never_give_wrong_numbers(small: Path, tmp_path: Path,
                                                                   compression: str) -> None:
    """Single-bit flips and truncations (150; ``make fuzz``: 3,000): load gives the original arrays or FormatError, never another
    exception or other numbers; verify reports damage whenever load did not give the original."""
    out = convert(small, tmp_path / "out", compression=compression)
    weights = out / "weights.parquet"
    original_bytes = weights.read_bytes()
    original = streamconv.load(out)
    rng = np.random.default_rng(8 if compression == "zstd" else 9)
    outcomes = {"same": 0, "FormatError": 0}
    trials = fuzz_cases(150)
    for trial in range(trials):
        data = bytearray(original_bytes)
        if trial % 10 == 9:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        weights.write_bytes(bytes(data))
        try:
            loaded = streamconv.load(out)
        except FormatError:
            outcomes["FormatError"] += 1
        else:
            assert loaded.keys() == original.keys(), f"trial {trial}"
            for name, array in original.items():
                assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, (trial, name)
                assert loaded[name].tobytes() == array.tobytes(), (trial, name)
            outcomes["same"] += 1
            continue
        assert not streamconv.verify(out, workers=1).passed, f"trial {trial}: load failed, verify passed"
    assert outcomes["FormatError"] > trials // 3, outcomes
