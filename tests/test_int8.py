"""int8 storage (format 4, codes nibble-split since 5): weight matrices as int8 codes with float16 block scales, read back as values.

The models here are tiny but wide enough for the rule: 2-D tensors of at least 16,384 elements and 64
columns are quantized (hidden size 128).
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
from streamconv.cli.app import main
from streamconv.errors import FormatError
from streamconv.format.schema import checksum
from tests.conftest import write_safetensors

QUERY = "encoder.layer.0.attention.self.query.weight"
WORDS = "embeddings.word_embeddings.weight"
BIAS = "encoder.layer.0.attention.self.query.bias"


def _bert(folder: Path) -> Path:
    import transformers

    config = transformers.BertConfig(vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=256, max_position_embeddings=64, initializer_range=0.05)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A BERT of hidden size 128 and its int8 conversion (copy the output before damaging it)."""
    root = tmp_path_factory.mktemp("int8")
    source = _bert(root / "src")
    return source, streamconv.convert(source, root / "out", dtype="int8").output_dir


def _documented(values: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """docs/format.md's rule, written again here: scale = float16(max|block| / 127), code = rint(x / scale)."""
    rows, cols = values.shape
    grid = values.astype(np.float32).reshape(rows, cols // block, block)
    scales = (np.abs(grid).max(axis=2) / np.float32(127)).astype(np.float16)
    wide = scales.astype(np.float32)[:, :, None]
    codes = np.clip(np.rint(grid / np.where(wide == 0, 1, wide)), -127, 127).astype(np.int8)
    return codes.reshape(rows, cols), scales


def test_round_trip_codes_scales_and_values(bert_int8: tuple[Path, Path], dequant_kernel: str) -> None:
    from safetensors.numpy import load_file

    source, out = bert_int8
    original = load_file(source / "model.safetensors")
    info = {t.name: t for t in streamconv.describe(out)}
    assert info[QUERY].block == 64 and info[QUERY].dtype == "int8" and info[WORDS].quantized
    assert not info[BIAS].quantized and info[BIAS].dtype == "float16"
    raw = {r.name: r for r in streamconv.iter_tensors(out, dequantize=None)}
    codes, scales = _documented(original[QUERY])
    assert raw[QUERY].array.dtype == np.int8 and np.array_equal(raw[QUERY].array, codes)
    assert raw[QUERY].scales.shape == (128, 2) and raw[QUERY].scales.tobytes() == scales.tobytes()
    values = codes.astype(np.float32) * np.repeat(scales.astype(np.float32), 64, axis=1)
    half = streamconv.load(out)[QUERY]
    assert half.dtype == np.float16 and half.tobytes() == values.astype(np.float16).tobytes()
    wide = streamconv.load_tensor(out, QUERY, dequantize="float32")
    assert wide.dtype == np.float32 and np.array_equal(wide, values)
    assert np.abs(wide - original[QUERY]).max() <= np.abs(original[QUERY]).max() / 254 * 1.01
    assert streamconv.load(out)[BIAS].tobytes() == original[BIAS].astype(np.float16).tobytes()
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["format_version"] == 5 and metadata["dtype"] == "int8"
    assert metadata["quantization"]["block"] == 64 and metadata["quantization"]["kept_float16"] == []
    assert pq.ParquetFile(out / "weights.parquet").schema_arrow.metadata[b"streamconv.format_version"] == b"5"


def test_outputs_without_int8_stay_version_3(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "src" / "model.safetensors", {"w": np.ones((4, 4), np.float32)})
    out = streamconv.convert(tmp_path / "src", tmp_path / "out").output_dir
    assert pq.ParquetFile(out / "weights.parquet").schema_arrow.metadata[b"streamconv.format_version"] == b"3"
    assert json.loads((out / "metadata.json").read_text())["format_version"] == 3


def test_size_split_output_and_dry_run(bert_int8: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = bert_int8
    float16 = streamconv.convert(source, tmp_path / "f16")
    int8 = json.loads((out / "metadata.json").read_text())
    assert int8["output_bytes"] < 0.65 * float16.output_bytes  # its small tensors stay float16
    dry = streamconv.convert(source, tmp_path / "dry", dtype="int8", dry_run=True)
    assert abs(dry.output_bytes - int8["output_bytes"]) < 0.15 * int8["output_bytes"]
    assert {t["name"]: t["dtype"] for t in dry.tensors}[QUERY] == "int8"
    split = streamconv.convert(source, tmp_path / "split", dtype="int8", max_file_size="100KiB", chunk_size="32KiB")
    assert len(split.files) > 2
    assert json.loads((split.output_dir / "weights.parquet.index.json").read_text())["format_version"] == 5
    whole, parts = streamconv.load(out), streamconv.load(split.output_dir)
    assert all(whole[n].tobytes() == parts[n].tobytes() for n in whole)


def _checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    spiky = np.full((256, 128), 0.5, np.float32)
    spiky[:, ::64] = 127.0  # every block: one value of 127 and 63 at half a step: 3.1% error
    return write_safetensors(folder / "model.safetensors", {
        "a.weight": rng.standard_normal((256, 128)).astype(np.float32),
        "b.weight": spiky,
        "c.bias": rng.standard_normal(128).astype(np.float32),
    }).parent


def test_fallback_and_keep_float(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _checkpoint(tmp_path / "src")
    result = streamconv.convert(source, tmp_path / "out", dtype="int8")
    assert result.stored_dtypes == {"int8": 1, "float16": 2}
    assert result.quantization["kept_float16"] == [
        {"name": "b.weight", "reason": "int8 error 0.0312 beyond the budget of 0.02"}]
    assert any("'b.weight' kept in float16" in w for w in result.warnings)
    spiky = streamconv.load(result.output_dir)["b.weight"]
    assert spiky.dtype == np.float16 and spiky[0, 0] == 127 and spiky[0, 1] == 0.5
    assert main(["convert", str(source), "-o", str(tmp_path / "kept"), "--dtype", "int8",
                 "--keep-float", "a.*", "--keep-float", "nothing.*"]) == 0
    text = capsys.readouterr().out
    assert "kept in float16: a.weight (--keep-float a.*)" in text
    assert "kept in float16: b.weight (int8 error 0.0312" in text
    assert "warning: --keep-float 'nothing.*' matches no weight matrix" in text
    kept = json.loads((tmp_path / "kept" / "metadata.json").read_text())
    assert kept["stored_dtypes"] == {"float16": 3}
    assert main(["convert", str(source), "-o", str(tmp_path / "no"), "--keep-float", "a.*"]) == 2
    assert "--keep-float" in capsys.readouterr().err


def _rewrite_scales(out: Path, change, column: str = "scales") -> None:
    """Rewrite the weights file with ``change(name, payload) -> payload`` on every int8 row's ``column``
    (``scales`` or ``data``), with a checksum that matches the new bytes (damage no checksum can see)."""
    path = out / "weights.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["block"]:
            row[column] = change(row["name"], row[column])
            row[f"{column}_bytes"], row[f"{column}_xxh3"] = len(row[column]), checksum(row[column])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


@pytest.mark.parametrize("damage", ["zero-scale", "missing"])
def test_damaged_scales_exit_3_in_one_line(bert_int8: tuple[Path, Path], tmp_path: Path, damage: str,
                                           capsys: pytest.CaptureFixture[str], dequant_kernel: str) -> None:
    from streamconv.format import codec

    out = Path(shutil.copytree(bert_int8[1], tmp_path / "out"))

    def change(name: str, payload: bytes) -> bytes:
        if name != QUERY:
            return payload
        if damage == "missing":
            return b""
        scales = codec.decode(payload, np.float16, 128 * 2, "zstd", 4).copy()
        scales[0] = 0  # its block's codes are not zero
        return bytes(codec.encode(scales, "zstd"))

    _rewrite_scales(out, change)
    with pytest.raises(FormatError, match="query.weight"):
        streamconv.load(out)
    for command in (["export", str(out), "--to", str(tmp_path / "hf")], ["verify", str(out)]):
        assert main(command) == 3
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and QUERY in errors[0] and "\n" not in errors[0]
    assert QUERY in captured.out  # verify names the damaged tensor
    assert not (tmp_path / "hf").exists()


def test_v5_refused_by_a_version_4_reader(bert_int8: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from streamconv.format import toc

    monkeypatch.setattr(toc, "FORMAT_VERSION", 4)
    with pytest.raises(FormatError, match="format version 5, newer than this reader's 4; upgrade streamconv"):
        streamconv.load(bert_int8[1])
    assert main(["inspect", str(bert_int8[1])]) == 3


def _coders(out: Path) -> dict[str, tuple[int, int]]:
    """Per tensor: the coder byte of its first chunk's data, and of its scales (-1: none)."""
    rows = pq.read_table(out / "weights.parquet", columns=["name", "chunk_index", "data", "scales"])
    return {row["name"]: (row["data"][0], row["scales"][0] if row["scales"] else -1)
            for row in rows.to_pylist() if row["chunk_index"] == 0 and row["data"]}


def test_codes_are_nibble_split_and_scales_and_floats_are_not(bert_int8: tuple[Path, Path]) -> None:
    coders = _coders(bert_int8[1])
    info = {t.name: t for t in streamconv.describe(bert_int8[1])}
    quantized = [name for name in coders if info[name].quantized]
    assert QUERY in quantized and WORDS in quantized
    for name, (data, scales) in coders.items():  # every int8 chunk here is over the 8 KiB sample
        assert (data == 3) == (name in quantized) and scales != 3, name


def test_version_4_int8_output_still_reads(bert_int8: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An output as version 4 wrote it (codes coded by zstd: coders 0 to 2 only) reads as before."""
    from streamconv.format import codec, schema

    monkeypatch.setattr(schema, "INT8_VERSION", 4)
    monkeypatch.setattr(codec, "NIBBLE_ABOVE_BITS", 4.1)  # no plane qualifies: the version-4 writer
    old = streamconv.convert(bert_int8[0], tmp_path / "v4", dtype="int8").output_dir
    monkeypatch.undo()
    assert pq.ParquetFile(old / "weights.parquet").schema_arrow.metadata[b"streamconv.format_version"] == b"4"
    assert max(max(pair) for pair in _coders(old).values()) <= 2
    new = streamconv.load(bert_int8[1])
    assert all(array.tobytes() == new[name].tobytes() for name, array in streamconv.load(old).items())
    assert main(["verify", str(old)]) == 0


@pytest.mark.parametrize("damage", ["low nibbles cut", "frame length"])
def test_damaged_nibble_split_codes_exit_3_in_one_line(bert_int8: tuple[Path, Path], tmp_path: Path, damage: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(shutil.copytree(bert_int8[1], tmp_path / "out"))

    def change(name: str, payload: bytes) -> bytes:
        if name != QUERY:
            return payload
        assert payload[0] == 3
        body = payload[9:-1] if damage == "low nibbles cut" else \
            (int.from_bytes(payload[9:17], "little") + 1).to_bytes(8, "little") + payload[17:]
        return payload[:1] + len(body).to_bytes(8, "little") + body

    _rewrite_scales(out, change, "data")
    with pytest.raises(FormatError, match="query.weight.*nibble-split body"):
        streamconv.load(out)
    assert main(["export", str(out), "--to", str(tmp_path / "hf")]) == 3
    assert main(["verify", str(out)]) == 3
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and QUERY in errors[0] and "nibble" in errors[0]
    assert QUERY in captured.out  # verify names the damaged tensor


def test_export_loads_in_transformers(bert_int8: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    import transformers

    source, out = bert_int8
    streamconv.export(out, tmp_path / "hf")
    ids = torch.tensor([[2, 50, 60, 70, 3]])
    with torch.no_grad():
        want = transformers.BertModel.from_pretrained(source).eval()(ids).last_hidden_state
        got = transformers.BertModel.from_pretrained(tmp_path / "hf").float().eval()(ids).last_hidden_state
    assert torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0) > 0.9995


def test_convert_validate_passes_and_a_1_percent_change_is_named(bert_int8: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from streamconv.tools.validate import validate

    source, out = bert_int8
    assert main(["convert", str(source), "-o", str(tmp_path / "checked"), "--dtype", "int8", "--validate", "-q"]) == 0
    report = json.loads((tmp_path / "checked" / "metadata.json").read_text())["validation"]
    assert report["passed"] and "re-quantized from the source" in report["checks"][1]["detail"]
    changed = Path(shutil.copytree(source, tmp_path / "changed"))
    tensors = load_file(changed / "model.safetensors")
    tensors[QUERY] = tensors[QUERY] * np.float32(1.01)
    save_file(tensors, changed / "model.safetensors", metadata={"format": "pt"})
    failed = {c.name: c.detail for c in validate(out, changed).checks if not c.passed}
    assert set(failed) >= {"weights"} and QUERY in failed["weights"], failed


def test_compiled_rule_and_fast_float16_give_the_numpy_bits() -> None:
    from streamconv.format.quantized import dequantize_into
    from streamconv.stages import quantize

    if quantize._KERNEL is None:
        pytest.skip("the compiled kernel is not built for this CPU")
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(64 * 512) * 0.02).astype(np.float32)
    values[:64] = 0
    values[64:128] = -0.0
    values[128:192] = np.arange(64) * 0.5  # ties: x / scale lands on halves
    values[192:256] = rng.standard_normal(64).astype(np.float32) * 1e-6  # scales below float16's normal range
    values[256:320] = 3e-6  # scale rounds to 0
    compiled = [np.array(part, copy=True) for part in quantize.quantize_rows(values, 1024)[:2]]
    kernel, quantize._KERNEL = quantize._KERNEL, None
    try:
        numpy_codes, numpy_scales, _ = quantize.quantize_rows(values, 1024)
    finally:
        quantize._KERNEL = kernel
    assert np.array_equal(compiled[0], numpy_codes) and compiled[1].tobytes() == numpy_scales.tobytes()
    assert not np.signbit(numpy_scales).any()
    out = np.empty(values.size, np.float16)
    dequantize_into(numpy_codes, numpy_scales, 1024, 64, out)
    exact = numpy_codes.astype(np.float32) * np.repeat(numpy_scales.astype(np.float32), 64)
    assert out.tobytes() == exact.astype(np.float16).tobytes()
    normal = numpy_scales.copy()
    normal[normal < np.float16(2**-14)] = 0  # the fast bit path: every scale a normal float16
    codes = numpy_codes.copy()
    codes.reshape(-1, 64)[normal == 0] = 0
    dequantize_into(codes, normal, 1024, 64, out)
    exact = codes.astype(np.float32) * np.repeat(normal.astype(np.float32), 64)
    assert out.tobytes() == exact.astype(np.float16).tobytes()


def test_format_doc_reader_decodes_int8(bert_int8: tuple[Path, Path]) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(snippet, "docs/format.md", "exec"), namespace)
    got = namespace["read_tensor"](bert_int8[1] / "weights.parquet", QUERY)
    assert got.dtype == np.float32
    assert np.array_equal(got, streamconv.load_tensor(bert_int8[1], QUERY, dequantize="float32"))


def test_real_minilm_int8_is_4x_smaller_and_sentence_transformers_loads_its_export(
        minilm_path: Path, minilm_converted, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = minilm_converted("int8")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["source_bytes"] / metadata["output_bytes"] >= 4.0
    streamconv.export(out, tmp_path / "hf")
    texts = ["The quick brown fox jumps over the lazy dog.", "A quick brown fox jumped over a lazy dog!"]
    want = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    got = SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(texts, normalize_embeddings=True)
    assert float((want * got).sum(axis=1).min()) >= 0.9995
