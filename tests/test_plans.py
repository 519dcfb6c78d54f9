"""Model plans on tiny checkpoints built by transformers: the exact tensor set each plan stores,
the names it gives them, detection, --type and --parts, and checkpoints that do not fit their plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import streamconv
from streamconv.cli.app import main
from streamconv.errors import InvalidOptionError, PlanError, UnsafeInputError
from streamconv.plans import ModelInfo, choose_plan, plan_names
from streamconv.plans.sentence_transformers import SentenceTransformersPlan
from streamconv.sources.checkpoint import Checkpoint, open_checkpoint
from tests import models
from tests.models import LAYERS


def wb(*stems: str) -> set[str]:
    """``stem.weight`` and ``stem.bias`` for every stem."""
    return {f"{s}.{leaf}" for s in stems for leaf in ("weight", "bias")}


def per_layer(prefix: str, names: set[str], count: int = LAYERS) -> set[str]:
    return {f"{prefix}.{i}.{n}" for i in range(count) for n in names}


def bert_names(layers: int = LAYERS) -> set[str]:
    layer = wb(
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm",
    )
    embeddings = {f"embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")}
    return embeddings | wb("embeddings.LayerNorm", "pooler.dense") | per_layer("encoder.layer", layer, layers)


DISTILBERT = (
    {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"}
    | wb("embeddings.LayerNorm")
    | per_layer("transformer.layer", wb(
        "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
        "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm",
    ))
)
_CLIP_LAYER = wb(
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
    "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2",
)
CLIP_VISION_TOWER = (
    {f"vision_model.embeddings.{e}" for e in ("class_embedding", "patch_embedding.weight", "position_embedding.weight")}
    | wb("vision_model.pre_layrnorm", "vision_model.post_layernorm")
    | per_layer("vision_model.encoder.layers", _CLIP_LAYER)
)
CLIP_VISION = CLIP_VISION_TOWER | {"visual_projection.weight"}
CLIP_TEXT = (
    {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"}
    | {"text_projection.weight", "logit_scale"}
    | wb("text_model.final_layer_norm")
    | per_layer("text_model.encoder.layers", _CLIP_LAYER)
)
_WHISPER_LAYER = {"self_attn.k_proj.weight"} | wb(
    "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj", "self_attn_layer_norm",
    "fc1", "fc2", "final_layer_norm",
)
WHISPER_ENCODER = (
    {"encoder.position_embedding.weight"}
    | wb("encoder.conv1", "encoder.conv2", "encoder.layer_norm")
    | per_layer("encoder.layers", _WHISPER_LAYER)
)
WHISPER_DECODER = (
    {"decoder.embed_tokens.weight", "decoder.position_embedding.weight"}
    | wb("decoder.layer_norm")
    | per_layer("decoder.layers", _WHISPER_LAYER | {"encoder_attn.k_proj.weight"} | wb(
        "encoder_attn.q_proj", "encoder_attn.v_proj", "encoder_attn.out_proj", "encoder_attn_layer_norm",
    ))
)
LLAMA = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | per_layer(
    "model.layers",
    {f"self_attn.{p}_proj.weight" for p in "qkvo"}
    | {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    | {"input_layernorm.weight", "post_attention_layernorm.weight"},
)


def stored(output: Path) -> dict[str, str]:
    """Stored name -> source name of every tensor in a converted output."""
    return {t.name: t.source_name for t in streamconv.describe(output)}


def metadata(output: Path) -> dict:
    return json.loads((output / "metadata.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Build each tiny checkpoint once per module: ``built("clip")`` -> its folder."""
    cache: dict[str, Path] = {}
    builders = {
        "bert": models.bert,
        "bert-mlm": lambda f: models.bert(f, "BertForMaskedLM"),
        "roberta": models.roberta,
        "distilbert": models.distilbert,
        "clip": models.clip,
        "clip-vision": models.clip_vision,
        "clip-vision-projection": lambda f: models.clip_vision(f, "CLIPVisionModelWithProjection"),
        "whisper": models.whisper,
        "whisper-model": lambda f: models.whisper(f, "WhisperModel"),
        "llama": models.llama_bf16,
        "sentence-transformers": models.sentence_transformer,
    }

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = builders[name](tmp_path_factory.mktemp(name))
        return cache[name]

    return get


# --- tensor sets, plan by plan --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bert", bert_names()), ("roberta", bert_names()), ("distilbert", DISTILBERT)],
)
def test_bert_family_keeps_every_tensor_under_its_name(built, tmp_path: Path, name: str, expected: set[str]) -> None:
    result = streamconv.convert(built(name), tmp_path / "out")
    assert (result.model_type, result.detected) == ("bert", True)
    names = stored(result.output_dir)
    assert set(names) == expected
    assert all(source == name for name, source in names.items())


def test_bert_task_model_keeps_its_head(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("bert-mlm"), tmp_path / "out")
    names = set(stored(result.output_dir))
    assert {n.removeprefix("bert.") for n in names if n.startswith("bert.")} == bert_names() - wb("pooler.dense")
    assert wb("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm") | {"cls.predictions.bias"} <= names


def test_sentence_transformers_stores_dense_under_its_module_path(built, tmp_path: Path) -> None:
    folder = built("sentence-transformers")
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    assert (result.model_type, result.detected) == ("sentence-transformers", True)
    names = stored(result.output_dir)
    assert set(names) == bert_names() | {"2_Dense.linear.weight", "2_Dense.linear.bias"}
    assert names["2_Dense.linear.weight"] == "2_Dense.linear.weight"
    dense = load_file(folder / "2_Dense" / "model.safetensors")
    np.testing.assert_array_equal(streamconv.load_tensor(result.output_dir, "2_Dense.linear.weight"), dense["linear.weight"])
    meta = metadata(result.output_dir)
    assert meta["sentence_transformers"] == {
        "pooling_mode": "cls",
        "normalize": True,
        "max_seq_length": 48,
        "similarity_function": "dot",
        "modules": [
            {"index": 0, "type": "Transformer", "path": ""},
            {"index": 1, "type": "Pooling", "path": "1_Pooling"},
            {"index": 2, "type": "Dense", "path": "2_Dense", "tensor_prefix": "2_Dense."},
            {"index": 3, "type": "Normalize", "path": "3_Normalize"},
        ],
    }
    assert [f["path"] for f in meta["source"]["files"]] == ["model.safetensors", "2_Dense/model.safetensors"]


def test_sentence_transformers_module_path_must_stay_inside(tmp_path: Path) -> None:
    folder = models.folder_with(tmp_path / "st", {"model_type": "bert"})
    models.write_json(folder / "modules.json", [{"path": "../elsewhere", "type": "sentence_transformers.models.Dense"}])
    with pytest.raises(UnsafeInputError, match=r"modules.json: names '../elsewhere', which is not a plain relative path"):
        streamconv.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sentence_transformers_module_folder_linking_outside_is_refused(tmp_path: Path) -> None:
    folder = models.folder_with(tmp_path / "st", {"model_type": "bert"})
    (tmp_path / "elsewhere").mkdir()
    (folder / "2_Dense").symlink_to(tmp_path / "elsewhere")
    models.write_json(folder / "modules.json", [{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    with pytest.raises(UnsafeInputError, match=r"2_Dense: leads through a symlink to .*outside"):
        streamconv.convert(folder, tmp_path / "out")


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
        ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ["cls", "max"]),
        ({"pooling_mode_mean_tokens": False}, "mean"),  # sentence-transformers' default
        ({"pooling_mode": "lasttoken"}, "lasttoken"),
        ({"pooling_mode": ["mean", "max"]}, ["mean", "max"]),
    ],
)
def test_pooling_mode_reads_old_and_new_configs(tmp_path: Path, pooling: dict, expected: object) -> None:
    models.write_json(tmp_path / "modules.json", [{"idx": 0, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    models.write_json(tmp_path / "1_Pooling" / "config.json", pooling)
    meta = SentenceTransformersPlan().metadata(Checkpoint("x", tmp_path, [], []))["sentence_transformers"]
    assert meta["pooling_mode"] == expected
    assert (meta["normalize"], meta["max_seq_length"], meta["similarity_function"]) == (False, None, "cosine")


def test_sentence_transformers_dense_without_weights_is_an_error(built, tmp_path: Path) -> None:
    folder = tmp_path / "st"
    models.sentence_transformer(folder)
    (folder / "2_Dense" / "model.safetensors").rename(folder / "2_Dense" / "model.bak")
    with pytest.raises(PlanError, match=r"2_Dense: the Dense module has no model.safetensors or pytorch_model.bin \(found config.json, model.bak\)"):
        streamconv.convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clip_full_model_vision_by_default_text_on_request(built, tmp_path: Path) -> None:
    vision = streamconv.convert(built("clip"), tmp_path / "vision")
    assert (vision.model_type, vision.parts) == ("clip", ["vision"])
    assert stored(vision.output_dir) == {n: n for n in CLIP_VISION}
    both = streamconv.convert(built("clip"), tmp_path / "both", parts=["vision", "text"])
    assert set(stored(both.output_dir)) == CLIP_VISION | CLIP_TEXT
    text = streamconv.convert(built("clip"), tmp_path / "text", parts=["text"])
    assert set(stored(text.output_dir)) == CLIP_TEXT


def test_clip_vision_with_projection(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("clip-vision-projection"), tmp_path / "out")
    assert (result.model_type, result.source_layout) == ("clip", "CLIPModel")
    assert stored(result.output_dir) == {n: n for n in CLIP_VISION}


def test_clip_vision_model_of_transformers_5_gets_the_vision_model_prefix(built, tmp_path: Path) -> None:
    folder = built("clip-vision")
    assert "embeddings.class_embedding" in load_file(folder / "model.safetensors")  # no prefix in the file
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    assert (result.model_type, result.source_layout) == ("clip", "CLIPVisionModel (transformers 5)")
    names = stored(result.output_dir)
    assert set(names) == CLIP_VISION_TOWER
    assert names["vision_model.encoder.layers.1.mlp.fc2.bias"] == "encoder.layers.1.mlp.fc2.bias"
    assert metadata(result.output_dir)["source_layout"] == "CLIPVisionModel (transformers 5)"


def test_clip_vision_model_of_transformers_4_is_read_as_saved(built, tmp_path: Path) -> None:
    folder = tmp_path / "clip4"
    models.clip_vision(folder)
    models.rewrite_weights(folder, rename=lambda name: f"vision_model.{name}")
    result = streamconv.convert(folder, tmp_path / "out")
    assert stored(result.output_dir) == {n: n for n in CLIP_VISION_TOWER}


def test_clip_without_vision_tower_lists_what_is_missing(built, tmp_path: Path) -> None:
    folder = tmp_path / "text-only"
    models.clip(folder)
    models.rewrite_weights(folder, keep=lambda name: not name.startswith(("vision_model.", "visual_projection.")))
    with pytest.raises(PlanError) as caught:
        streamconv.convert(folder, tmp_path / "out")
    message = str(caught.value)
    for needle in (
        "needs for parts vision",
        "vision_model.embeddings.patch_embedding.weight, vision_model.encoder.layers.*, vision_model.post_layernorm.weight",
        "it has logit_scale, text_model.*, text_projection.*",
        "--parts (vision, text)",
    ):
        assert needle in message
    assert not (tmp_path / "out").exists()
    assert set(stored(streamconv.convert(folder, tmp_path / "out", parts=["text"]).output_dir)) == CLIP_TEXT


@pytest.mark.parametrize(
    ("name", "layout", "prefix"),
    [("whisper", "WhisperForConditionalGeneration", "model."), ("whisper-model", "WhisperModel", "")],
)
def test_whisper_encoder_only_by_default(built, tmp_path: Path, name: str, layout: str, prefix: str) -> None:
    result = streamconv.convert(built(name), tmp_path / "out", dtype="keep")
    assert (result.model_type, result.parts, result.source_layout) == ("whisper", ["encoder"], layout)
    names = stored(result.output_dir)
    assert set(names) == WHISPER_ENCODER
    assert names["encoder.position_embedding.weight"] == f"{prefix}encoder.embed_positions.weight"
    assert names["encoder.layers.0.fc1.weight"] == f"{prefix}encoder.layers.0.fc1.weight"
    source = load_file(built(name) / "model.safetensors")
    np.testing.assert_array_equal(
        streamconv.load_tensor(result.output_dir, "encoder.position_embedding.weight"),
        source[f"{prefix}encoder.embed_positions.weight"],
    )


@pytest.mark.parametrize("name", ["whisper", "whisper-model"])
def test_whisper_encoder_and_decoder(built, tmp_path: Path, name: str) -> None:
    result = streamconv.convert(built(name), tmp_path / "out", parts=["encoder", "decoder"])
    # proj_out.weight is tied to decoder.embed_tokens.weight: transformers does not save it.
    assert set(stored(result.output_dir)) == WHISPER_ENCODER | WHISPER_DECODER


def test_whisper_keeps_an_untied_proj_out_with_the_decoder(built, tmp_path: Path) -> None:
    folder = tmp_path / "untied"
    models.whisper(folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "proj_out.weight": tensors["model.decoder.embed_tokens.weight"]}, folder / "model.safetensors")
    assert "proj_out.weight" not in stored(streamconv.convert(folder, tmp_path / "enc").output_dir)
    decoder = streamconv.convert(folder, tmp_path / "dec", parts=["decoder"])
    assert set(stored(decoder.output_dir)) == WHISPER_DECODER | {"proj_out.weight"}


def test_generic_bf16_model_keeps_names_and_dtype(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("llama"), tmp_path / "out", dtype="keep")
    assert (result.model_type, result.detected) == ("generic", False)
    assert stored(result.output_dir) == {n: n for n in LLAMA}
    assert {t.dtype for t in streamconv.describe(result.output_dir)} == {"bfloat16"}
    assert result.warnings[0].startswith(
        "no model plan recognised this checkpoint (config.json has model_type 'llama' and architectures "
        "LlamaForCausalLM); "
        "converted with the generic plan"
    )
    weight = streamconv.load_tensor(result.output_dir, "model.norm.weight")
    assert weight.dtype == np.dtype(ml_dtypes.bfloat16)


def test_real_minilm(minilm_path: Path, minilm_converted) -> None:
    out = minilm_converted()
    meta = metadata(out)
    assert (meta["model_type"], meta["detected"], meta["warnings"]) == ("sentence-transformers", True, [])
    names = stored(out)
    assert set(names) == bert_names(6) | {"embeddings.position_ids"}
    position_ids = streamconv.load_tensor(out, "embeddings.position_ids")
    assert position_ids.dtype == np.int64
    np.testing.assert_array_equal(position_ids, np.arange(512).reshape(1, 512))
    st = meta["sentence_transformers"]
    assert (st["pooling_mode"], st["normalize"], st["max_seq_length"], st["similarity_function"]) == ("mean", True, 256, "cosine")
    assets = [a["path"] for a in meta["assets"]]
    assert assets == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
    ]
    for asset in assets:
        assert (out / asset).read_bytes() == (minilm_path / asset).read_bytes()


def test_real_minilm_as_plain_bert(minilm_path: Path, tmp_path: Path) -> None:
    result = streamconv.convert(minilm_path, tmp_path / "out", model_type="bert")
    assert (result.model_type, result.detected, result.tensor_count) == ("bert", True, 104)
    assert "sentence_transformers" not in metadata(result.output_dir)


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "files", "plan", "detected"),
    [
        ({"model_type": "bert"}, (), "bert", True),
        ({"model_type": "xlm-roberta"}, (), "bert", True),
        ({"model_type": "mpnet"}, (), "bert", True),
        ({"model_type": "bert"}, ("modules.json",), "sentence-transformers", True),
        ({"model_type": "mpnet"}, ("config_sentence_transformers.json",), "sentence-transformers", True),
        (None, ("modules.json",), "sentence-transformers", True),
        ({"architectures": ["RobertaForMaskedLM"]}, (), "bert", True),  # no model_type: architectures
        ({"architectures": "BertModel"}, (), "generic", False),  # not a list: ignored
        ({"architectures": ["CLIPVisionModelWithProjection"]}, (), "clip", True),
        ({"model_type": "clip_vision_model"}, (), "clip", True),
        ({"model_type": "clip_text_model"}, (), "generic", False),
        ({"model_type": "whisper"}, (), "whisper", True),
        ({"model_type": "llama", "architectures": ["BertModel"]}, (), "generic", False),  # model_type wins
        ({"model_type": "llama"}, (), "generic", False),
        ({}, (), "generic", False),
        (None, (), "generic", False),
        ("{not json", (), "generic", False),
    ],
)
def test_detection(tmp_path: Path, config: object, files: tuple[str, ...], plan: str, detected: bool) -> None:
    model = ModelInfo.from_checkpoint(open_checkpoint(models.folder_with(tmp_path / "m", config, files)))
    found, claimed = choose_plan(model)
    assert (found.name, claimed) == (plan, detected)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"model_type": "bert"}, None),
        ({"hidden_size": 4}, "config.json has no model_type"),
        ({}, "config.json has no model_type"),
        ({"architectures": "BertModel"}, "config.json has no model_type"),
        (None, "the checkpoint has no config.json"),
        ("{not json", "config.json is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ("[1, 2]", "config.json is not a JSON object"),
    ],
)
def test_config_problems_are_named(tmp_path: Path, config: object, problem: str | None) -> None:
    model = ModelInfo.from_checkpoint(open_checkpoint(models.folder_with(tmp_path / "m", config)))
    assert model.config_problem == problem


def test_config_not_json_falls_back_to_generic_and_is_not_copied(tmp_path: Path) -> None:
    folder = models.folder_with(tmp_path / "m", "{not json")
    result = streamconv.convert(folder, tmp_path / "out")
    assert (result.model_type, result.detected) == ("generic", False)
    assert "no model plan recognised this checkpoint (config.json is not JSON (" in result.warnings[0]
    assert any(w.startswith(f"{folder / 'config.json'}: is not JSON (") and "not copied" in w for w in result.warnings)
    assert not (result.output_dir / "config.json").exists()
    assert metadata(result.output_dir)["assets"] == []


def test_config_without_model_type_falls_back_with_a_reason(tmp_path: Path) -> None:
    result = streamconv.convert(models.folder_with(tmp_path / "m", {"hidden_size": 4}), tmp_path / "out")
    assert result.warnings[0].startswith("no model plan recognised this checkpoint (config.json has no model_type)")


def test_type_that_contradicts_the_checkpoint_says_what_was_found(built, tmp_path: Path) -> None:
    with pytest.raises(PlanError) as caught:
        streamconv.convert(built("bert"), tmp_path / "out", model_type="clip")
    message = str(caught.value)
    assert "--type clip does not match this checkpoint" in message
    assert "looks for model_type clip or clip_vision_model, or architectures CLIPModel* or CLIPVisionModel*" in message
    assert "but config.json has model_type 'bert' and architectures BertModel, which the 'bert' plan handles" in message
    assert "use --type bert or --type auto, or --type generic" in message
    assert not (tmp_path / "out").exists()


def test_type_sentence_transformers_on_plain_bert_is_refused(built, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="looks for a modules.json or config_sentence_transformers.json file"):
        streamconv.convert(built("bert"), tmp_path / "out", model_type="sentence-transformers")


def test_type_on_a_model_type_no_plan_handles_is_refused(built, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="model_type 'llama' and architectures LlamaForCausalLM, which no plan handles; use --type auto"):
        streamconv.convert(built("llama"), tmp_path / "out", model_type="whisper")


def test_type_is_trusted_when_the_checkpoint_says_nothing(built, tmp_path: Path) -> None:
    folder = tmp_path / "no-config"
    models.whisper(folder, "WhisperModel")
    (folder / "config.json").unlink()
    result = streamconv.convert(folder, tmp_path / "out", model_type="whisper")
    assert (result.model_type, result.detected) == ("whisper", False)
    assert set(stored(result.output_dir)) == WHISPER_ENCODER
    with pytest.raises(PlanError, match="lacks tensors the 'clip' plan needs"):
        streamconv.convert(folder, tmp_path / "clip", model_type="clip")


def test_type_generic_and_unknown_type(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("whisper"), tmp_path / "out", model_type="generic")
    assert (result.model_type, result.detected, result.warnings) == ("generic", False, [])
    assert "model.decoder.embed_tokens.weight" in stored(result.output_dir)
    with pytest.raises(InvalidOptionError, match="model_type='vit' is not a model type; choose auto or one of sentence-transformers, bert"):
        streamconv.convert(built("whisper"), tmp_path / "vit", model_type="vit")


def test_unknown_part(built, tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="parts='vision': model type 'whisper' has no part 'vision'; choose from encoder, decoder"):
        streamconv.convert(built("whisper"), tmp_path / "out", parts=["vision"])


def test_include_exclude_match_source_names_after_a_layout_rename(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("whisper"), tmp_path / "out", include=["model.encoder.conv*"])
    assert set(stored(result.output_dir)) == wb("encoder.conv1", "encoder.conv2")


def test_registry_order_and_cli_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_names() == ["sentence-transformers", "bert", "clip", "siglip", "whisper", "generic"]
    assert main(["types"]) == 0
    out = capsys.readouterr().out
    for name in plan_names():
        assert f"\n{name}: " in f"\n{out}"
    assert "detects: a modules.json or config_sentence_transformers.json file" in out
    assert "parts:   vision*, text  (* = default)" in out


def test_cli_summary_says_how_the_plan_was_chosen(built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(built("whisper")), "-o", str(tmp_path / "a")]) == 0
    assert "model type whisper (detected), parts encoder" in capsys.readouterr().out
    assert main(["convert", str(built("whisper")), "-o", str(tmp_path / "b"), "--type", "generic"]) == 0
    assert "model type generic (--type generic), parts all" in capsys.readouterr().out
    assert main(["convert", str(built("llama")), "-o", str(tmp_path / "c")]) == 0
    assert "model type generic (no plan recognised the checkpoint), parts all" in capsys.readouterr().out


def test_pattern_matching_only_dropped_tensors_is_named(built, tmp_path: Path) -> None:
    result = streamconv.convert(built("clip"), tmp_path / "out", include=["vision_model.*", "text_model.*"])
    assert "pattern 'text_model.*' matched only tensors outside the converted parts" in result.warnings
    assert all(name.startswith("vision_model.") for name in stored(result.output_dir))


def test_every_plan_module_is_listed_in_the_registry() -> None:
    """A plan class written in streamconv/plans/ but left out of PLANS would be silently unused."""
    import importlib
    import inspect
    import pkgutil

    import streamconv.plans as package
    from streamconv.plans import PLANS, Plan

    defined = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"streamconv.plans.{info.name}")
        defined |= {
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Plan) and obj is not Plan and obj.__module__ == module.__name__
        }
    assert defined == set(PLANS)
    assert PLANS[-1].name == "generic"


def test_old_model_type_spellings_are_accepted(minilm_path: Path, tmp_path: Path) -> None:
    for spelling in ("sentence_transformer", "sentence-transformers", "sentence_transformers"):
        options = streamconv.ConvertOptions(model_type=spelling)
        assert options.model_type == "sentence-transformers"
    assert {streamconv.ConvertOptions(model_type=t).model_type for t in ("bert", "clip", "whisper")} == {
        "bert", "clip", "whisper"
    }


def test_a_sentence_transformers_folder_is_parsed_once_per_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamconv import _files

    folder = models.folder_with(tmp_path / "st", {"model_type": "bert"})
    models.write_json(folder / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    reads: list[str] = []
    real = _files.read_json

    def counting(path: Path, **kwargs: object) -> object:
        # The asset copy checks each JSON file it copies; the facts are what the plan parses.
        if sys._getframe(1).f_globals["__name__"] != "streamconv.pipeline.assets":
            reads.append(Path(path).name)
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_files, "read_json", counting)
    streamconv.convert(folder, tmp_path / "out")
    assert reads.count("modules.json") == 1, reads
