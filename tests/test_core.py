"""The streaming core through the library API: round trips, chunking, stages, casting, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

import streamconv
from streamconv.errors import OutputExistsError
from streamconv.format import codec
from tests.conftest import all_dtype_tensors, cached_snapshot, run_cli, write_safetensors, write_sharded


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def expected_cast(array: np.ndarray, dtype: str) -> np.ndarray:
    """numpy's cast, as documented: floats only, integers and bool untouched."""
    if dtype == "keep" or array.dtype.kind in "iub":
        return array
    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        array = array.astype(np.float32)
    return array.astype(target)


@pytest.mark.parametrize("dtype", ["keep", "float16", "bfloat16", "float32"])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_round_trip_every_dtype(tiny_checkpoint: Path, tmp_path: Path, dtype: str, compression: str) -> None:
    source = all_dtype_tensors()
    result = streamconv.convert(tiny_checkpoint, tmp_path / "out", dtype=dtype, compression=compression)
    loaded = streamconv.load(result.output_dir)
    assert set(loaded) == set(source)
    for name, array in source.items():
        want = expected_cast(array, dtype)
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert bits(got) == bits(want), name
    assert result.tensor_count == len(source)
    assert result.parameter_count == sum(a.size for a in source.values())


def test_output_folder_contents_and_metadata(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = streamconv.convert(tiny_checkpoint, tmp_path / "out", level=5)
    names = sorted(p.name for p in result.output_dir.iterdir())
    assert names == ["config.json", "metadata.json", "weights.parquet"]
    meta = json.loads(result.metadata_path.read_text())
    assert meta["format_version"] == 3
    assert (meta["compression"], meta["level"]) == ("zstd", 5)
    assert meta["files"] == [result.files[0]] and result.files[0]["path"] == "weights.parquet"
    assert meta["source"]["path"] == str(tiny_checkpoint.resolve())
    assert {k: meta[k] for k in result.to_dict() if k not in ("source", "output_dir")} == {
        k: v for k, v in result.to_dict().items() if k not in ("source", "output_dir")
    }
    assert meta["dtype"] == "float16"
    assert meta["tensor_count"] == result.tensor_count
    assert meta["output_bytes"] == result.weights_path.stat().st_size == result.output_bytes
    assert meta["source"]["files"] == [
        {"path": "model.safetensors", "bytes": (tiny_checkpoint / "model.safetensors").stat().st_size}
    ]
    assert meta["stored_dtypes"]["float16"] == 6  # f64 f32 f16 bf16 scalar empty
    assert meta["assets"][0]["path"] == "config.json"
    assert (result.output_dir / "config.json").read_bytes() == (tiny_checkpoint / "config.json").read_bytes()


def test_real_library_writer_input(tmp_path: Path) -> None:
    """A file written by safetensors itself (not our test writer) reads the same."""
    arrays = {"a": np.arange(10, dtype=np.float32), "b": np.ones((2, 2), dtype=np.int32)}
    save_file(arrays, str(tmp_path / "model.safetensors"))
    loaded = streamconv.load(streamconv.convert(tmp_path, tmp_path / "out", dtype="keep").output_dir)
    assert all(bits(loaded[k]) == bits(v) for k, v in arrays.items())


def test_sharded_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    shards = [
        {"a.weight": rng.standard_normal((8, 8)).astype(np.float32), "a.bias": np.zeros(8, np.float32)},
        {"b.weight": rng.standard_normal((4, 8)).astype(np.float32)},
        {"ids": np.arange(6, dtype=np.int64)},
    ]
    folder = write_sharded(tmp_path / "sharded", shards)
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(result.output_dir)
    merged = {k: v for shard in shards for k, v in shard.items()}
    assert set(loaded) == set(merged)
    assert all(bits(loaded[k]) == bits(v) for k, v in merged.items())
    meta = json.loads(result.metadata_path.read_text())
    assert [f["path"] for f in meta["source"]["files"]] == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]


@pytest.mark.parametrize("numel", [249, 250, 251, 1000, 1])
def test_chunk_boundaries(tmp_path: Path, numel: int) -> None:
    """chunk_size 1000 bytes = 250 float32 elements per chunk: sizes around the boundary."""
    array = np.arange(numel, dtype=np.float32) * 0.5
    write_safetensors(tmp_path / "m" / "model.safetensors", {"t": array})
    result = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="float16", chunk_size=1000)
    rows = pq.read_table(result.weights_path, columns=["chunk_index", "chunk_count", "element_offset", "element_count"])
    expected_chunks = -(-numel // 250)
    assert rows["chunk_count"].to_pylist() == [expected_chunks] * expected_chunks
    assert rows["chunk_index"].to_pylist() == list(range(expected_chunks))
    assert rows["element_offset"].to_pylist() == [i * 250 for i in range(expected_chunks)]
    assert sum(rows["element_count"].to_pylist()) == numel
    assert max(rows["element_count"].to_pylist()) <= 250
    assert bits(streamconv.load_tensor(result.output_dir, "t")) == bits(array.astype(np.float16))


def test_multi_dimensional_tensor_larger_than_a_chunk(tmp_path: Path) -> None:
    array = np.random.default_rng(2).standard_normal((37, 29)).astype(np.float32)
    write_safetensors(tmp_path / "m" / "model.safetensors", {"w": array, "small": np.ones(3, np.float32)})
    out = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="keep", chunk_size=100).output_dir
    assert bits(streamconv.load_tensor(out, "w")) == bits(array)
    assert streamconv.load_tensor(out, "w").shape == (37, 29)


def test_stages_compose_and_are_lazy(tmp_path: Path) -> None:
    arrays = {
        "encoder.layer.0.weight": np.full((4, 4), 2.0, np.float32),
        "encoder.layer.0.bias": np.ones(4, np.float32),
        "decoder.layer.0.weight": np.zeros((4, 4), np.float32),
        "encoder.position_ids": np.arange(4, dtype=np.int64),
    }
    write_safetensors(tmp_path / "model.safetensors", arrays)
    checkpoint = streamconv.open_checkpoint(tmp_path / "model.safetensors")

    refs = streamconv.select(checkpoint, include=["encoder.*"], exclude=["*.bias"])
    refs = streamconv.rename(refs, [(r"^encoder\.", ""), (r"layer\.(\d+)", r"blocks.\1")])
    chunks = list(streamconv.cast(streamconv.chunk(refs, chunk_size=16), "float16"))

    assert [(c.name, c.ref.source_name, c.index, c.count) for c in chunks] == [
        ("blocks.0.weight", "encoder.layer.0.weight", 0, 4),
        ("blocks.0.weight", "encoder.layer.0.weight", 1, 4),
        ("blocks.0.weight", "encoder.layer.0.weight", 2, 4),
        ("blocks.0.weight", "encoder.layer.0.weight", 3, 4),
        ("position_ids", "encoder.position_ids", 0, 2),
        ("position_ids", "encoder.position_ids", 1, 2),
    ]
    assert all(c.load().dtype == np.float16 for c in chunks[:4])
    assert chunks[4].load().dtype == chunks[5].load().dtype == np.int64  # integers are never cast

    # select and rename read nothing: handles on a file that does not exist still flow through.
    ghost = streamconv.TensorRef("x.w", "x.w", "F32", (2,), tmp_path / "missing.safetensors", 0, 8)
    assert [r.name for r in streamconv.rename(streamconv.select([ghost], include=["x.*"]), [("x", "y")])] == ["y.w"]


def test_rename_collision_is_an_error(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"a.w": np.ones(1, np.float32), "b.w": np.ones(1, np.float32)})
    refs = streamconv.open_checkpoint(tmp_path).tensors
    with pytest.raises(streamconv.StreamconvError, match="maps both 'a.w' and 'b.w' to 'w'"):
        list(streamconv.rename(refs, [(r"^[ab]\.", "")]))


def test_writer_generator_api(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m" / "model.safetensors", all_dtype_tensors())
    checkpoint = streamconv.open_checkpoint(tmp_path / "m")
    with streamconv.WeightsWriter(tmp_path / "w.parquet", level=1) as writer:
        summary = writer.write(streamconv.cast(streamconv.chunk(checkpoint, chunk_size=64), "keep"))
    assert summary.tensor_count == len(all_dtype_tensors())
    loaded = streamconv.load(tmp_path / "w.parquet")
    assert all(bits(loaded[k]) == bits(v) for k, v in all_dtype_tensors().items())


def test_fp16_overflow_keeps_float32_and_warns(tmp_path: Path, half_kernel: str) -> None:
    big = np.linspace(-1, 1, 600, dtype=np.float32)
    big[-1] = 70000.0  # in the last chunk only: the whole tensor must still stay float32
    fine = np.array([65504.0, -65504.0, np.inf, -np.inf, np.nan], dtype=np.float32)
    write_safetensors(tmp_path / "m" / "model.safetensors", {"big": big, "fine": fine})
    result = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="float16", chunk_size=400)
    loaded = streamconv.load(result.output_dir)
    assert loaded["big"].dtype == np.float32 and bits(loaded["big"]) == bits(big)
    assert loaded["fine"].dtype == np.float16  # inf/nan in the source are not an overflow
    assert bits(loaded["fine"]) == bits(fine.astype(np.float16))
    assert [w for w in result.warnings if "'big'" in w] == [
        "tensor 'big' has values up to 70000, beyond float16's range; stored as float32 instead"
    ]
    meta = json.loads(result.metadata_path.read_text())
    assert meta["warnings"] == result.warnings
    assert meta["stored_dtypes"] == {"float32": 1, "float16": 1}


def test_cast_without_prescan_raises_on_a_late_overflow(tmp_path: Path) -> None:
    big = np.zeros(600, dtype=np.float32)
    big[-1] = 1e5
    write_safetensors(tmp_path / "model.safetensors", {"big": big})
    pieces = streamconv.cast(streamconv.chunk(streamconv.open_checkpoint(tmp_path), chunk_size=1200), "float16", prescan=False)
    first, second = list(pieces)
    assert first.load().dtype == np.float16  # cast before the overflow is seen
    with pytest.raises(streamconv.errors.CastOverflowError, match="'big' has values up to 100000"):
        second.load()
    scanned = list(streamconv.cast(streamconv.chunk(streamconv.open_checkpoint(tmp_path), chunk_size=1200), "float16"))
    assert [p.load().dtype for p in scanned] == [np.float32, np.float32]


def test_bfloat16_overflow_to_float16_keeps_float32(tmp_path: Path, half_kernel: str) -> None:
    array = np.array([1.0, 1e6], dtype=np.float32).astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "m" / "model.safetensors", {"t": array})
    result = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="float16")
    got = streamconv.load_tensor(result.output_dir, "t")
    assert got.dtype == np.float32 and bits(got) == bits(array.astype(np.float32))


def _hard_values(source: np.dtype, target: np.dtype) -> list[float]:
    """Values at the edge of ``target``'s range, as ``source`` holds them."""
    top = float(ml_dtypes.finfo(target).max)
    as_source = np.array([top], source)
    up, down = np.nextafter(as_source, np.inf), np.nextafter(as_source, 0)  # bf16: nearest neighbours
    halfway = float(ml_dtypes.finfo(target).max) * (1 + 2.0 ** -(ml_dtypes.finfo(target).nmant + 2))
    return [top, -top, float(up[0]), -float(up[0]), float(down[0]), halfway, -halfway, top * 2, np.inf,
            -np.inf, np.nan, -0.0, float(ml_dtypes.finfo(target).smallest_subnormal)]


@pytest.mark.parametrize("source, target", [("float32", "float16"), ("bfloat16", "float16"),
                                            ("float64", "float32"), ("float32", "bfloat16")])
def test_overflow_check_on_the_cast_result_decides_as_the_exact_rule(
    tmp_path: Path, source: str, target: str, half_kernel: str
) -> None:
    """Each hard value among ordinary ones: stored, kept wider or refused exactly as ``finite_peak`` decides."""
    from streamconv.dtypes import by_name
    from streamconv.stages.casting import fallback_dtype, finite_peak
    from streamconv.stages.pieces import TensorChunk

    src, dst = by_name(source), by_name(target)
    with np.errstate(over="ignore"):
        tensors = {f"t{i}": np.array([0.5, value, -3.0], np.float64).astype(src.numpy)
                   for i, value in enumerate(_hard_values(src.numpy, dst.numpy))}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    for ref in streamconv.open_checkpoint(tmp_path):
        data = ref.read()
        peak = finite_peak(data)
        expected = dst if peak <= dst.max else fallback_dtype(src, peak)
        decided = TensorChunk(ref, 0, 1, 0, ref.numel, store_as=dst, mode="decide").load()
        assert decided.dtype == expected.numpy, (ref.name, data)
        with np.errstate(over="ignore"):
            assert bits(decided) == bits(data.astype(expected.numpy))
        checked = TensorChunk(ref, 0, 2, 0, ref.numel, store_as=dst, mode="check")
        if expected == dst:
            assert bits(checked.load()) == bits(decided)
        else:
            with pytest.raises(streamconv.errors.CastOverflowError):
                checked.load()


def test_failure_while_writing_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = codec.encode

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, "encode", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        streamconv.convert(tiny_checkpoint, tmp_path / "out", chunk_size=16)
    assert calls["n"] >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no output, no staging folder


def test_interrupt_while_writing_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        streamconv.convert(tiny_checkpoint, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_force_replaces_only_after_success(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out", dtype="float32").output_dir
    with pytest.raises(OutputExistsError):
        streamconv.convert(tiny_checkpoint, out)

    monkeypatch.setattr(codec, "encode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        streamconv.convert(tiny_checkpoint, out, force=True)
    assert streamconv.read_metadata(out)["dtype"] == "float32"

    monkeypatch.undo()
    streamconv.convert(tiny_checkpoint, out, force=True, dtype="float16")
    assert streamconv.read_metadata(out)["dtype"] == "float16" and (out / "weights.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny"]


def test_output_may_not_replace_the_source(tiny_checkpoint: Path) -> None:
    with pytest.raises(streamconv.StreamconvError, match="is the source checkpoint, which streamconv never replaces"):
        streamconv.convert(tiny_checkpoint, tiny_checkpoint, force=True)
    assert (tiny_checkpoint / "model.safetensors").is_file()


def test_include_exclude_and_unmatched_pattern_warning(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = streamconv.convert(tiny_checkpoint, tmp_path / "out", include=["f*", "i*"], exclude=["i8", "nothing*"])
    assert sorted(streamconv.load(result.output_dir)) == ["f16", "f32", "f64", "i16", "i32", "i64"]
    assert "pattern 'nothing*' matched no tensor" in result.warnings


def test_dry_run_writes_nothing_and_estimates(minilm_path: Path, minilm_converted, tmp_path: Path) -> None:
    result = streamconv.convert(minilm_path, tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
    assert result.dry_run and len(result.tensors) == result.tensor_count == 104
    planned = [a["path"] for a in result.assets]
    assert planned[:2] == ["config.json", "tokenizer.json"] and "1_Pooling/config.json" in planned
    real = streamconv.read_metadata(minilm_converted())
    assert abs(result.output_bytes / real["output_bytes"] - 1) < 0.1
    assert [a["path"] for a in real["assets"]] == planned
    assert result.chunk_count == real["chunk_count"]


def test_load_tensor_reads_only_its_row_groups(minilm_converted, monkeypatch: pytest.MonkeyPatch) -> None:
    out = minilm_converted()
    groups = pq.ParquetFile(out / "weights.parquet").num_row_groups
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: read.append(i) or real(self, i, *a, **k))
    tensor = streamconv.load_tensor(out, "encoder.layer.3.output.dense.weight")
    assert tensor.shape == (384, 1536)
    assert 1 <= len(read) <= 3 < groups
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        streamconv.load_tensor(out, "nope")


@pytest.mark.parametrize("dtype", ["keep", "float16"])
def test_real_minilm_round_trip(minilm_path: Path, minilm_converted, dtype: str) -> None:
    source = load_file(str(minilm_path / "model.safetensors"))
    out = minilm_converted(dtype)
    meta = streamconv.read_metadata(out)
    count = 0
    for record in streamconv.iter_tensors(out):
        assert bits(record.array) == bits(expected_cast(source[record.source_name], dtype)), record.name
        count += 1
    assert count == len(source) == meta["tensor_count"]
    assert meta["output_bytes"] < (minilm_path / "model.safetensors").stat().st_size / (2 if dtype == "float16" else 1)


def test_model_converter_has_the_old_shape(tiny_checkpoint: Path, tmp_path: Path) -> None:
    converter = streamconv.ModelConverter(dtype="keep", compression="none")
    result = converter.convert(str(tiny_checkpoint), str(tmp_path / "out"), model_type="auto")
    assert isinstance(result, streamconv.ConversionResult)
    assert result.dtype == "keep" and result.compression == "none"
    with pytest.raises(ValueError, match="unknown option"):
        streamconv.ModelConverter(use_lz4=True)


def test_hub_repo_id_from_offline_cache(tiny_checkpoint: Path, offline_hub_cache: Path, tmp_path: Path) -> None:
    """A repo id resolves through a Hugging Face cache laid out by hand, with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cached_snapshot(offline_hub_cache, "tiny-org/tiny-model", commit)
    for f in tiny_checkpoint.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    result = streamconv.convert("tiny-org/tiny-model", tmp_path / "out", dtype="keep")
    assert result.tensor_count == len(all_dtype_tensors())
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["source"]["id"] == "tiny-org/tiny-model" and meta["source"]["revision"] == commit

    missing = run_cli(["convert", "tiny-org/other-model", "-o", str(tmp_path / "o2")])
    assert missing.code == 2
    assert missing.stderr.startswith("error: tiny-org/other-model:") and "cache" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()


def test_format_doc_snippet_reads_a_tensor(minilm_converted, tmp_path: Path) -> None:
    """The plain pyarrow + numpy + zstandard reader in docs/format.md works as written, also on a
    bit-split plane (float16 cast from bfloat16)."""
    out = minilm_converted()
    doc = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(snippet, "docs/format.md", "exec"), namespace)
    name = "encoder.layer.0.attention.self.query.weight"
    got = namespace["read_tensor"](out / "weights.parquet", name)
    assert bits(got) == bits(streamconv.load_tensor(out, name))
    bf16 = (np.random.default_rng(0).standard_normal((500, 400)) * 0.02).astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "m" / "model.safetensors", {"w": bf16})
    split = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="float16").output_dir
    assert pq.read_table(split / "weights.parquet")["data"][0].as_py()[0] == 2
    assert bits(namespace["read_tensor"](split / "weights.parquet", "w")) == bits(streamconv.load_tensor(split, "w"))


def test_readme_generator_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("<!-- generator-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "minilm-encoder.parquet").is_file()


def test_row_groups_follow_the_writer_setting_and_grow_only_for_huge_models(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from streamconv.format.writer import ROW_GROUP_BYTES, row_group_bytes_for

    checkpoint = streamconv.open_checkpoint(tiny_checkpoint)
    with streamconv.WeightsWriter(tmp_path / "one-per-row.parquet", row_group_bytes=1) as writer:
        summary = writer.write(streamconv.chunk(checkpoint, chunk_size=16))
    assert pq.ParquetFile(tmp_path / "one-per-row.parquet").num_row_groups == summary.chunk_count > 12
    assert row_group_bytes_for(1_340_000_000) == ROW_GROUP_BYTES  # BERT-large
    assert row_group_bytes_for(8_600_000_000) == 8_600_000_000 // 2048  # the 8.6 GB benchmark checkpoint
    assert row_group_bytes_for(140 * 10**9) == 16 * 1024 * 1024  # 70B parameters in bf16: capped


def test_format_2_files_still_read(tmp_path: Path) -> None:
    """Format 3 only added the bit-split coder: a format-2 file (coders 0 and 1) reads as before,
    and a format-2 file cannot carry coder 2."""
    import pyarrow.compute as pc

    weights = {"w": np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32),
               "b": (np.random.default_rng(1).standard_normal(70_000) * 0.02).astype(ml_dtypes.bfloat16)}
    write_safetensors(tmp_path / "m" / "model.safetensors", weights)
    out = streamconv.convert(tmp_path / "m", tmp_path / "out", dtype="float16").output_dir
    expected = streamconv.load(out)
    path = out / "weights.parquet"
    table = pq.read_table(path)
    coders = {n: p[:2] for n, p in zip(table["name"].to_pylist(), table["data"].to_pylist(), strict=True)}
    assert coders["b"][0] == 2 and 2 not in coders["w"]  # the bf16-sourced low plane is bit-split
    as_v2 = table.replace_schema_metadata({**table.schema.metadata, b"streamconv.format_version": b"2"})
    pq.write_table(as_v2.filter(pc.equal(table["name"], "w")), path)
    assert bits(streamconv.load(out)["w"]) == bits(expected["w"])
    pq.write_table(as_v2, path)
    with pytest.raises(streamconv.errors.FormatError, match="unknown coder 2"):
        streamconv.load(out)
