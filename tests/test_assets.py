"""Assets beside the weights: copied files with their sha256, tokenizer.json built from vocab.txt and
checked, and what happens when a tokenizer cannot be built (a warning, or an error with strict)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

import streamconv
from streamconv.cli.app import main
from streamconv.errors import AssetError, MissingDependencyError
from tests import models

GARBAGE = b"this is not a sentencepiece model"


def metadata(output: Path) -> dict:
    return json.loads((output / "metadata.json").read_text())


def asset_paths(output: Path) -> list[str]:
    return [a["path"] for a in metadata(output)["assets"]]


@pytest.fixture(scope="module")
def vocab_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT that ships only vocab.txt as its tokenizer."""
    folder = models.bert(tmp_path_factory.mktemp("vocab-bert"))
    models.write_vocab(folder)
    return folder


@pytest.fixture
def unconvertible(tmp_path: Path) -> Path:
    """A checkpoint whose only tokenizer file is a damaged sentencepiece model."""
    folder = models.folder_with(tmp_path / "t5ish", {"model_type": "t5"})
    (folder / "spiece.model").write_bytes(GARBAGE)
    return folder


def test_tokenizer_json_is_built_from_vocab_txt_and_checked(vocab_bert: Path, tmp_path: Path) -> None:
    result = streamconv.convert(vocab_bert, tmp_path / "out")
    assert result.warnings == []
    record = next(a for a in result.assets if a["path"] == "tokenizer.json")
    assert record["built_from"] == ["vocab.txt"]
    path = result.output_dir / "tokenizer.json"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    tokenizer = Tokenizer.from_file(str(path))
    ids = {word: i for i, word in enumerate(models.VOCAB_WORDS)}
    # [CLS] hello , world ! [SEP], lower-cased as BERT's vocab.txt tokenizer does; unknown words -> [UNK]
    assert tokenizer.encode("Hello, WORLD!").ids == [ids[w] for w in ("[CLS]", "hello", ",", "world", "!", "[SEP]")]
    assert tokenizer.encode("the quick fox").ids == [ids[w] for w in ("[CLS]", "the", "quick", "[UNK]", "[SEP]")]
    assert metadata(result.output_dir)["assets"] == result.assets
    dry = streamconv.convert(vocab_bert, tmp_path / "dry", dry_run=True)
    assert {"path": "tokenizer.json", "built_from": ["vocab.txt"]} in dry.assets


def test_tokenizer_json_is_built_from_bpe_vocab_and_merges(tmp_path: Path) -> None:
    folder = models.write_bpe_vocab(models.roberta(tmp_path / "roberta"))
    result = streamconv.convert(folder, tmp_path / "out")
    assert result.warnings == []
    assert next(a for a in result.assets if a["path"] == "tokenizer.json")["built_from"] == ["vocab.json", "merges.txt"]
    tokenizer = Tokenizer.from_file(str(result.output_dir / "tokenizer.json"))
    ids = {token: i for i, token in enumerate(models.BPE_VOCAB)}
    assert tokenizer.encode("hello world!").ids == [ids[t] for t in ("<s>", "hello", "\u0120world", "!", "</s>")]


def test_copied_assets_are_byte_identical_with_their_sha256(tmp_path: Path, minilm_path: Path) -> None:
    folder = models.clip(tmp_path / "clip")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((minilm_path / name).read_bytes())
    models.write_json(folder / "preprocessor_config.json", {"image_processor_type": "CLIPImageProcessor", "crop_size": 30})
    (folder / "README.md").write_text("not an asset")
    result = streamconv.convert(folder, tmp_path / "out")
    assert asset_paths(result.output_dir) == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
    ]
    for record in result.assets:
        data = (folder / record["path"]).read_bytes()
        assert (result.output_dir / record["path"]).read_bytes() == data
        assert (record["bytes"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert sorted(p.name for p in result.output_dir.iterdir()) == sorted(
        [*asset_paths(result.output_dir), "metadata.json", "weights.parquet"]
    )


def test_sentence_transformers_module_files(tmp_path: Path) -> None:
    folder = models.sentence_transformer(tmp_path / "st")
    result = streamconv.convert(folder, tmp_path / "out")
    assert asset_paths(result.output_dir) == [
        "config.json", "tokenizer.json", "tokenizer_config.json",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling/config.json", "2_Dense/config.json", "3_Normalize/config.json",
    ]
    assert not (result.output_dir / "2_Dense" / "model.safetensors").exists()  # its tensors are in the Parquet


def test_unconvertible_tokenizer_is_a_warning_and_the_weights_are_written(unconvertible: Path, tmp_path: Path) -> None:
    result = streamconv.convert(unconvertible, tmp_path / "out")
    assert len(result.warnings) == 2  # generic fallback, then the tokenizer
    assert result.warnings[1].startswith(f"{unconvertible}: tokenizer.json could not be built from the slow-tokenizer files (")
    assert result.warnings[1].endswith("; add a tokenizer.json to the checkpoint")
    assert asset_paths(result.output_dir) == ["config.json"]
    assert list(streamconv.load(result.output_dir)) == ["weight"]
    assert metadata(result.output_dir)["warnings"] == result.warnings


def test_strict_makes_an_unconvertible_tokenizer_an_error(unconvertible: Path, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="tokenizer.json could not be built"):
        streamconv.convert(unconvertible, tmp_path / "out", strict=True)
    assert list(tmp_path.iterdir()) == [unconvertible]  # no output, no staging folder


def test_cli_strict(unconvertible: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(unconvertible), "-o", str(tmp_path / "out"), "--strict"]) == AssetError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {unconvertible}: tokenizer.json could not be built")
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(unconvertible), "-o", str(tmp_path / "out")]) == 0
    assert "warning: " + str(unconvertible) in capsys.readouterr().out


def test_asset_that_is_not_json_is_skipped_or_fails_with_strict(vocab_bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad-preprocessor"
    models.bert(folder)
    (folder / "preprocessor_config.json").write_text("{'single': 'quotes'}")
    result = streamconv.convert(folder, tmp_path / "out")
    assert result.warnings == [
        f"{folder / 'preprocessor_config.json'}: is not JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)), so it was not copied; fix or remove the file",
        f"{folder / 'tokenizer.json'}: is missing, and the model's inputs are prepared with it; "
        "add tokenizer.json to the checkpoint",
    ]
    assert asset_paths(result.output_dir) == ["config.json"]
    with pytest.raises(AssetError, match="preprocessor_config.json: is not JSON"):
        streamconv.convert(folder, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_tokenizer_that_encodes_differently_is_not_shipped(
    vocab_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    load = transformers.AutoTokenizer.from_pretrained

    def original_keeps_case(path: Path, use_fast: bool, **kwargs: object) -> object:
        # The "original" tokenizer disagrees with the converted one on upper-case text.
        return load(path, use_fast=use_fast, **kwargs, **({} if use_fast else {"do_lower_case": False}))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", original_keeps_case)
    result = streamconv.convert(vocab_bert, tmp_path / "out")
    assert len(result.warnings) == 1
    assert "the tokenizer.json built from the slow-tokenizer files encodes 'Hello, world!' as [2, 5, 7, 6, 8, 3] " \
           "where the original tokenizer gives [2, 1, 7, 6, 8, 3], so it was not written" in result.warnings[0]
    assert "tokenizer.json" not in asset_paths(result.output_dir)
    assert not (result.output_dir / "tokenizer.json").exists()


def test_missing_transformers_is_named(vocab_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    result = streamconv.convert(vocab_bert, tmp_path / "out")
    assert result.warnings == [
        "transformers is needed to build tokenizer.json from the slow-tokenizer files but is not installed; "
        "install it with `pip install 'streamconv[validate]'`"
    ]
    assert (result.output_dir / "weights.parquet").is_file()
    with pytest.raises(MissingDependencyError):
        streamconv.convert(vocab_bert, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
