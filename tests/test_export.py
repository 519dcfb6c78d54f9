"""Export back to Hugging Face checkpoints, split outputs, and loading by source names, for every plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import streamconv
from streamconv.cli.app import main
from streamconv.errors import FormatError, InvalidOptionError, OutputExistsError
from tests import models

# Every plan on a tiny model, converted whole (all parts) so the export is the whole checkpoint.
PLANS = {
    "bert": (models.bert, None),
    "clip": (models.clip, ["vision", "text"]),
    "whisper": (models.whisper, ["encoder", "decoder"]),
    "sentence-transformers": (models.sentence_transformer, None),
}


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each plan's tiny checkpoint and its ``--dtype keep`` conversion."""
    root = tmp_path_factory.mktemp("plans")
    out = {}
    for name, (build, parts) in PLANS.items():
        source = build(root / name)
        result = streamconv.convert(source, root / f"{name}-out", dtype="keep", parts=parts)
        out[name] = (source, result.output_dir)
    return out


def _source_tensors(source: Path) -> dict[str, np.ndarray]:
    tensors = load_file(source / "model.safetensors")
    dense = source / "2_Dense" / "model.safetensors"
    if dense.is_file():
        tensors.update({f"2_Dense.{k}": v for k, v in load_file(dense).items()})
    return tensors


@pytest.mark.parametrize("plan", list(PLANS))
def test_load_by_source_names(converted: dict[str, tuple[Path, Path]], plan: str) -> None:
    source, out = converted[plan]
    original = _source_tensors(source)
    loaded = streamconv.load(out, names="source")
    assert set(loaded) == set(original)
    assert all(_bits(loaded[k]) == _bits(v) for k, v in original.items())
    records = list(streamconv.iter_tensors(out, names="source"))
    assert [name for name, _ in records] == [r.source_name for r in records]
    if plan == "whisper":
        assert "model.encoder.embed_positions.weight" in loaded
        assert "encoder.position_embedding.weight" in streamconv.load(out)
        assert streamconv.load_tensor(out, "model.encoder.embed_positions.weight", names="source").shape == (16, 32)


@pytest.mark.parametrize("plan", ["bert", "clip", "whisper"])
def test_export_round_trip_loads_in_transformers(
    converted: dict[str, tuple[Path, Path]], tmp_path: Path, plan: str
) -> None:
    import transformers

    source, out = converted[plan]
    result = streamconv.export(out, tmp_path / "hf")
    assert result.warnings == []
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    original = load_file(source / "model.safetensors")
    assert set(exported) == set(original)
    assert all(_bits(exported[k]) == _bits(v) and exported[k].dtype == v.dtype for k, v in original.items())
    assert (tmp_path / "hf" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    model = transformers.AutoModel.from_pretrained(tmp_path / "hf")
    state = model.state_dict()
    for name, array in original.items():
        key = name.removeprefix("model.") if plan == "whisper" else name
        if key in state:
            assert np.array_equal(state[key].numpy(), array), name


def test_export_sentence_transformers_dense_and_shards(converted: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    source, out = converted["sentence-transformers"]
    streamconv.export(out, tmp_path / "hf", max_shard_size=20_000)
    target = tmp_path / "hf"
    index = json.loads((target / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((target / s).is_file() for s in shards)
    dense = load_file(target / "2_Dense" / "model.safetensors")
    assert set(dense) == {"linear.weight", "linear.bias"}
    assert _bits(dense["linear.weight"]) == _bits(load_file(source / "2_Dense/model.safetensors")["linear.weight"])
    for name in ("modules.json", "1_Pooling/config.json", "2_Dense/config.json", "config_sentence_transformers.json"):
        assert (target / name).read_bytes() == (source / name).read_bytes(), name


def test_export_real_minilm_encodes_identically(minilm_path: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = streamconv.convert(minilm_path, tmp_path / "out", dtype="keep").output_dir
    assert main(["export", str(out), "--to", str(tmp_path / "hf")]) == 0
    texts = ["hello world", "streamconv writes parquet weights"]
    original = SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    exported = SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(texts)
    assert np.array_equal(original, exported)


def test_export_of_some_parts_warns(converted: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    source, _ = converted["whisper"]
    out = streamconv.convert(source, tmp_path / "enc", dtype="keep").output_dir  # encoder only
    result = streamconv.export(out, tmp_path / "hf", dtype="float16")
    assert any("only the encoder part" in w for w in result.warnings)
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert all(k.startswith("model.encoder.") for k in exported)
    assert exported["model.encoder.conv1.weight"].dtype == np.float16


def test_split_output_reads_back_through_every_command(
    converted: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, whole = converted["bert"]
    out = streamconv.convert(source, tmp_path / "split", dtype="keep", chunk_size=4096, max_file_size=24_000).output_dir
    files = sorted(p.name for p in out.glob("weights-*.parquet"))
    count = len(files)
    assert count > 2 and files == [f"weights-{i:05d}-of-{count:05d}.parquet" for i in range(1, count + 1)]
    assert not (out / "weights.parquet").exists() and not list(out.glob("*.incomplete"))
    index = json.loads((out / "weights.parquet.index.json").read_text())
    assert [f["path"] for f in index["files"]] == files
    meta = streamconv.read_metadata(out)
    assert [f["path"] for f in meta["files"]] == files and all(len(f["sha256"]) == 64 for f in meta["files"])
    assert all((out / f).stat().st_size <= 24_000 for f in files)  # no single chunk is larger here
    expected = streamconv.load(whole)
    loaded = streamconv.load(out)
    assert {k: _bits(v) for k, v in loaded.items()} == {k: _bits(v) for k, v in expected.items()}
    assert [r.name for r in streamconv.iter_tensors(out)] == list(expected)
    assert [t.name for t in streamconv.describe(out)] == list(expected)
    big = "embeddings.word_embeddings.weight"  # spans several files
    assert _bits(streamconv.load_tensor(out, big)) == _bits(expected[big])
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"in {count} files" in text and big in text
    assert text.index("encoder.layer.0.") < text.index("encoder.layer.1.")
    streamconv.export(out, tmp_path / "hf")
    assert set(load_file(tmp_path / "hf" / "model.safetensors")) == set(expected)


def test_bad_inputs_one_line_and_nothing_written(
    converted: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = converted["bert"]
    target = tmp_path / "exists"
    target.mkdir()
    with pytest.raises(OutputExistsError):
        streamconv.export(out, target)
    assert main(["export", str(out), "--to", str(target)]) == 4
    assert capsys.readouterr().err.count("\n") == 1 and list(target.iterdir()) == []

    with pytest.raises(InvalidOptionError, match="max_file_size"):
        streamconv.convert(source, tmp_path / "tiny", chunk_size=4096, max_file_size=1000)
    assert main(["convert", str(source), "-o", str(tmp_path / "tiny"), "--chunk-size", "4KiB",
                 "--max-file-size", "1000", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-file-size" in err and not (tmp_path / "tiny").exists()

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in out.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    data = bytearray((damaged / "weights.parquet").read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the data column
    (damaged / "weights.parquet").write_bytes(bytes(data))
    with pytest.raises(FormatError):
        streamconv.export(damaged, tmp_path / "from-damaged")
    assert main(["export", str(damaged), "--to", str(tmp_path / "from-damaged")]) == 3
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "from-damaged").exists()
    assert not [p for p in tmp_path.iterdir() if "incomplete" in p.name]


def test_export_to_float16_keeps_out_of_range_tensors_in_float32(tmp_path: Path) -> None:
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    late = rng.standard_normal(1000).astype(np.float32)
    late[-1] = 7e4  # in the last chunk: found after the first chunks were written as float16
    tensors = {
        "late": late,
        "fits": rng.standard_normal(1000).astype(np.float32),
        "bf16": np.array([1.0, -2.0**18, np.inf, 2.0], dtype=ml_dtypes.bfloat16),
        "edge": np.array([65504.0, -65504.0, np.inf, np.nan], dtype=np.float32),  # no finite value beyond
        "ids": np.arange(5, dtype=np.int64),
    }
    (tmp_path / "src").mkdir()
    save_file(tensors, tmp_path / "src" / "model.safetensors")
    out = streamconv.convert(tmp_path / "src", tmp_path / "out", dtype="keep", chunk_size=1024).output_dir
    # Float16 fits one 5000-byte file; with `late` kept in float32 it takes two.
    result = streamconv.export(out, tmp_path / "hf", dtype="float16", max_shard_size=5000)
    notes = [w for w in result.warnings if "range" in w]
    assert len(notes) == 2
    assert "'late' has values up to 70000, beyond float16's range; stored as float32" in notes[0]
    assert "'bf16' has values up to 262144" in notes[1]
    target = tmp_path / "hf"
    assert not (target / "model.safetensors").exists()
    index = json.loads((target / "model.safetensors.index.json").read_text())
    exported: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        exported.update(load_file(target / shard))
    assert {k: v.dtype for k, v in exported.items()} == {
        "late": np.float32, "fits": np.float16, "bf16": np.float32, "edge": np.float16, "ids": np.int64,
    }
    assert _bits(exported["late"]) == _bits(late)
    assert _bits(exported["bf16"]) == _bits(tensors["bf16"].astype(np.float32))
    assert _bits(exported["fits"]) == _bits(tensors["fits"].astype(np.float16))
    assert _bits(exported["edge"][:3]) == _bits(tensors["edge"][:3].astype(np.float16))
    assert [f["path"] for f in result.files if f["path"].endswith(".safetensors")] == sorted(set(index["weight_map"].values()))
