"""PyTorch .bin checkpoints: single and sharded, read lazily, refused when unsafe or not zip."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

import streamconv
from streamconv.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    ShardIndexError,
    UnsafeCheckpointError,
    UnsupportedDtypeError,
)
from streamconv.sources.torch_bin import ShardCache, load_state_dict
from tests import models
from tests.conftest import cached_snapshot, run_cli


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.contiguous().numpy()


@pytest.fixture(scope="module")
def bert_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny BERT saved as safetensors, and its state dict."""
    folder = models.bert(tmp_path_factory.mktemp("bert") / "st")
    import transformers

    model = transformers.BertModel.from_pretrained(folder)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bin_folder(folder: Path, source: Path, shards: list[dict]) -> Path:
    """``source``'s config.json plus the state dict as pytorch_model.bin (one shard) or shards + index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes((source / "config.json").read_bytes())
    if len(shards) == 1:
        torch.save(shards[0], folder / "pytorch_model.bin")
        return folder
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _assert_same(loaded: dict[str, np.ndarray], state: dict) -> None:
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        want = _numpy(tensor)
        assert loaded[name].dtype == want.dtype and loaded[name].shape == want.shape, name
        assert _bits(loaded[name]) == _bits(want), name


def test_single_bin_converts_like_safetensors(bert_state: tuple[Path, dict], tmp_path: Path) -> None:
    source, state = bert_state
    folder = _bin_folder(tmp_path / "bin", source, [state])
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    assert result.model_type == "bert"
    _assert_same(streamconv.load(result.output_dir, names="source"), state)
    meta = streamconv.read_metadata(result.output_dir)
    assert [f["path"] for f in meta["source"]["files"]] == ["pytorch_model.bin"]
    # The plan's expected assets are checked for .bin inputs too.
    assert any("tokenizer.json" in w for w in result.warnings)
    from_st = streamconv.load(streamconv.convert(source, tmp_path / "st", dtype="float16").output_dir)
    from_bin = streamconv.load(streamconv.convert(folder, tmp_path / "bin16", dtype="float16").output_dir)
    assert {k: _bits(v) for k, v in from_st.items()} == {k: _bits(v) for k, v in from_bin.items()}


def test_sharded_bin_reads_one_shard_at_a_time(bert_state: tuple[Path, dict], tmp_path: Path) -> None:
    source, state = bert_state
    names = list(state)
    folder = _bin_folder(tmp_path / "bin", source, [{k: state[k] for k in names[:20]}, {k: state[k] for k in names[20:]}])
    checkpoint = streamconv.open_checkpoint(folder)
    assert [p.name for p in checkpoint.weight_files] == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    cache: ShardCache = checkpoint.tensors[0].cache  # type: ignore[attr-defined]
    assert cache._path is None  # listing the tensors released every mapping
    checkpoint.tensors[0].read(0, 3)
    assert cache._path == checkpoint.weight_files[0]
    checkpoint.tensors[-1].read()
    assert cache._path == checkpoint.weight_files[1] and set(cache._tensors) == set(names[20:])
    checkpoint.tensors[0].read(0, 3)  # a late read of an earlier shard does not map it again for good
    assert cache._path == checkpoint.weight_files[1]
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    _assert_same(streamconv.load(result.output_dir, names="source"), state)


def test_safetensors_wins_over_bin(bert_state: tuple[Path, dict], tmp_path: Path) -> None:
    source, state = bert_state
    folder = _bin_folder(tmp_path / "both", source, [{"other": torch.zeros(3)}])
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    checkpoint = streamconv.open_checkpoint(folder)
    assert [p.name for p in checkpoint.weight_files] == ["model.safetensors"]


def test_views_shared_storage_and_dtypes(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {
        "transposed": base.t(),  # non-contiguous view
        "rows": base[2:4],  # shares base's storage at an offset
        "strided": base[:, ::3],
        "base": base,
        "bf16": torch.randn(5, 7).to(torch.bfloat16),
        "f16": torch.randn(9).half(),
        "i64": torch.arange(11),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    folder = tmp_path / "views"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep", chunk_size=64)
    _assert_same(streamconv.load(result.output_dir), state)


def test_unsupported_torch_dtype_is_refused_and_excludable(tmp_path: Path) -> None:
    folder = tmp_path / "complex"
    folder.mkdir()
    torch.save({"ok": torch.ones(3), "z": torch.ones(2, dtype=torch.complex64)}, folder / "pytorch_model.bin")
    with pytest.raises(UnsupportedDtypeError, match="'z'"):
        streamconv.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert streamconv.convert(folder, tmp_path / "out", exclude=["z"]).tensor_count == 1


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"weight": torch.ones(2), "x": _Exploit(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="not executed") as info:
        streamconv.convert(folder, tmp_path / "out")
    assert "\n" not in str(info.value) and "system" in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()
    from streamconv.cli.app import main

    assert main(["convert", str(folder), "-o", str(tmp_path / "o2"), "-q"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not marker.exists() and not (tmp_path / "o2").exists()


def test_non_zip_and_legacy_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CorruptCheckpointError, match="not a zip-format"):
        streamconv.convert(folder, tmp_path / "out")
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptCheckpointError, match="legacy.*re-save"):
        streamconv.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_naming_a_missing_shard(bert_state: tuple[Path, dict], tmp_path: Path) -> None:
    source, state = bert_state
    names = list(state)
    folder = _bin_folder(tmp_path / "bin", source, [{k: state[k] for k in names[:5]}, {k: state[k] for k in names[5:]}])
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ShardIndexError, match="pytorch_model-00002-of-00002.bin"):
        streamconv.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_torch_the_error_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"streamconv\[bin\]"):
        load_state_dict(path)


def test_bin_file_path_converts_like_a_safetensors_file_path(bert_state: tuple[Path, dict], tmp_path: Path) -> None:
    from streamconv.cli.app import main

    source, state = bert_state
    folder = _bin_folder(tmp_path / "bin", source, [state])
    assert main(["convert", str(folder / "pytorch_model.bin"), "-o", str(tmp_path / "out"), "--dtype", "keep", "-q"]) == 0
    _assert_same(streamconv.load(tmp_path / "out", names="source"), state)
    meta = streamconv.read_metadata(tmp_path / "out")
    assert meta["model_type"] == "bert" and [f["path"] for f in meta["source"]["files"]] == ["pytorch_model.bin"]


def test_hub_cache_with_only_a_bin(bert_state: tuple[Path, dict], offline_hub_cache: Path, tmp_path: Path) -> None:
    """A repo id whose cached snapshot holds pytorch_model.bin and no safetensors, with HF_HUB_OFFLINE=1."""
    source, state = bert_state
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = cached_snapshot(offline_hub_cache, "tiny-org/bin-only", commit)
    snapshot.rmdir()
    _bin_folder(snapshot, source, [state])
    done = run_cli(["convert", "tiny-org/bin-only", "-o", str(tmp_path / "out"), "--dtype", "keep", "-q"])
    assert done.code == 0, done.stderr
    _assert_same(streamconv.load(tmp_path / "out", names="source"), state)
    meta = streamconv.read_metadata(tmp_path / "out")
    assert meta["source"]["revision"] == commit and [f["path"] for f in meta["source"]["files"]] == ["pytorch_model.bin"]


def test_hub_fetches_bin_only_when_the_repo_has_no_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from streamconv.sources.hub import BIN_ALLOW_PATTERNS, HUB_ALLOW_PATTERNS, download_snapshot

    calls: list[tuple[str | None, list[str]]] = []
    snapshot = tmp_path / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)

    def fake(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> str:
        calls.append((revision, list(allow_patterns or [])))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert download_snapshot("org/bin-only", "main") == (snapshot, "0123abcd")
    # The .bin files are fetched from the commit the first fetch resolved, not the branch again.
    assert calls == [("main", HUB_ALLOW_PATTERNS), ("0123abcd", BIN_ALLOW_PATTERNS)]
    (snapshot / "model.safetensors").write_bytes(b"")
    calls.clear()
    download_snapshot("org/with-safetensors", None)
    assert calls == [(None, HUB_ALLOW_PATTERNS)]
    from huggingface_hub.utils import filter_repo_objects

    files = ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
             "2_Dense/pytorch_model.bin", "openvino/openvino_model.bin", "training_args.bin", "tf_model.h5"]
    assert list(filter_repo_objects(files, allow_patterns=BIN_ALLOW_PATTERNS)) == files[:4]


def test_sentence_transformers_dense_only_in_a_bin(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    source = models.sentence_transformer_bin(tmp_path / "st")
    assert sorted(p.name for p in (source / "2_Dense").iterdir()) == ["config.json", "pytorch_model.bin"]
    dense = {f"2_Dense.{k}": _numpy(v) for k, v in torch.load(source / "2_Dense" / "pytorch_model.bin").items()}
    result = streamconv.convert(source, tmp_path / "out", dtype="keep")
    assert result.model_type == "sentence-transformers"
    loaded = streamconv.load(result.output_dir, names="source")
    assert {k: _bits(loaded[k]) for k in dense} == {k: _bits(v) for k, v in dense.items()}
    streamconv.export(result.output_dir, tmp_path / "hf")
    exported = load_file(tmp_path / "hf" / "2_Dense" / "model.safetensors")
    assert {f"2_Dense.{k}": _bits(v) for k, v in exported.items()} == {k: _bits(v) for k, v in dense.items()}
    from sentence_transformers import SentenceTransformer

    texts = ["hello world", "the quick"]
    original = SentenceTransformer(str(source), device="cpu").encode(texts)
    assert np.array_equal(original, SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(texts))
