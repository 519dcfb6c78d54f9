"""Tiny Hugging Face checkpoints for the plan and asset tests, saved with transformers into a folder.

Every builder writes ``model.safetensors`` + ``config.json`` (as ``save_pretrained`` does) into
``folder`` and returns it. Sizes are tiny: hidden size 32, 2 layers, a vocabulary of 99.
transformers and torch are imported inside the builders, so importing this module is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

LAYERS = 2
HIDDEN = 32
VOCAB = 99
#: A WordPiece vocabulary: the BERT special tokens, then a few words of the sample texts.
VOCAB_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", ",", "!", "the", "quick", "##s"]
#: A byte-level BPE vocabulary (RoBERTa's special tokens) and the merges that build its words.
BPE_VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "h", "e", "l", "o", "he", "ll", "hell", "hello",
             "\u0120", "w", "r", "d", ",", "!", "\u0120w", "or", "\u0120wor", "ld", "\u0120world"]
BPE_MERGES = ["h e", "l l", "he ll", "hell o", "\u0120 w", "o r", "\u0120w or", "l d", "\u0120wor ld"]

_ENCODER = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=37)


def _save(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def bert(folder: Path, architecture: str = "BertModel") -> Path:
    """A tiny BERT of class ``architecture`` (``BertModel``, ``BertForMaskedLM``...)."""
    import transformers

    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **_ENCODER)
    return _save(getattr(transformers, architecture)(config), folder)


def roberta(folder: Path) -> Path:
    """A tiny ``RobertaModel``."""
    import transformers

    config = transformers.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=64, **_ENCODER)
    return _save(transformers.RobertaModel(config), folder)


def distilbert(folder: Path) -> Path:
    """A tiny ``DistilBertModel``."""
    import transformers

    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=2, hidden_dim=37, max_position_embeddings=64
    )
    return _save(transformers.DistilBertModel(config), folder)


def _clip_vision_config() -> dict[str, Any]:
    return dict(image_size=30, patch_size=15, projection_dim=16, **_ENCODER)


def _clip_text_config() -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB, max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=2, **_ENCODER
    )


def clip(folder: Path) -> Path:
    """A tiny ``CLIPModel``: both towers, both projections, ``logit_scale``."""
    import transformers

    config = transformers.CLIPConfig(
        text_config=_clip_text_config(), vision_config=_clip_vision_config(), projection_dim=16
    )
    return _save(transformers.CLIPModel(config), folder)


def clip_vision(folder: Path, architecture: str = "CLIPVisionModel") -> Path:
    """A tiny vision-only CLIP: ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``."""
    import transformers

    config = transformers.CLIPVisionConfig(**_clip_vision_config())
    return _save(getattr(transformers, architecture)(config), folder)


def whisper(folder: Path, architecture: str = "WhisperForConditionalGeneration") -> Path:
    """A tiny Whisper: ``WhisperForConditionalGeneration`` (``model.`` prefix) or ``WhisperModel``."""
    import transformers

    config = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
        num_mel_bins=8, max_source_positions=16, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )
    return _save(getattr(transformers, architecture)(config), folder)


def llama_bf16(folder: Path) -> Path:
    """A tiny ``LlamaForCausalLM`` stored in bfloat16."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=1, **_ENCODER)
    return _save(transformers.LlamaForCausalLM(config).to(torch.bfloat16), folder)


def sentence_transformer(
    folder: Path, max_seq_length: int | None = None, normalize_first: bool = False, pooling: str = "cls"
) -> Path:
    """A tiny BERT laid out as sentence-transformers saves it, with CLS pooling, Dense, Normalize.

    The module files are written by hand, in the format of sentence-transformers 5 (``pooling_mode``
    as a string, max_seq_length in tokenizer_config.json, or in sentence_bert_config.json when
    ``max_seq_length`` is given). ``normalize_first`` lists Normalize before Dense; ``pooling`` is
    the Pooling module's mode.
    """
    bert(folder)
    write_vocab(folder)
    modules = [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"),
        ("3_Normalize", "sentence_transformers.models.Normalize"),
    ]
    if normalize_first:
        modules[2], modules[3] = modules[3], modules[2]
    entries = [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(modules)]
    write_json(folder / "modules.json", entries)
    write_json(
        folder / "config_sentence_transformers.json",
        {"model_type": "SentenceTransformer", "similarity_fn_name": "dot"},
    )
    sbert: dict[str, Any] = {"transformer_task": "feature-extraction"}
    if max_seq_length is not None:
        sbert["max_seq_length"] = max_seq_length
    write_json(folder / "sentence_bert_config.json", sbert)
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", "model_max_length": 48})
    write_json(
        folder / "1_Pooling/config.json",
        {"embedding_dimension": HIDDEN, "pooling_mode": pooling, "include_prompt": True},
    )
    write_json(
        folder / "2_Dense/config.json",
        {"in_features": HIDDEN, "out_features": 16, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"},
    )
    rng = np.random.default_rng(0)
    dense = {
        "linear.weight": rng.standard_normal((16, HIDDEN)).astype(np.float32),
        "linear.bias": rng.standard_normal(16).astype(np.float32),
    }
    save_file(dense, folder / "2_Dense/model.safetensors")
    write_json(folder / "3_Normalize/config.json", {})
    return folder


def sentence_transformer_bin(folder: Path) -> Path:
    """:func:`sentence_transformer` with its Dense weights only in ``2_Dense/pytorch_model.bin``
    (``torch.save`` of the state dict, as sentence-transformers before safetensors saved them)."""
    import torch

    sentence_transformer(folder)
    dense = folder / "2_Dense"
    state = {name: torch.from_numpy(array) for name, array in load_file(dense / "model.safetensors").items()}
    torch.save(state, dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    return folder


def write_vocab(folder: Path) -> Path:
    """Write :data:`VOCAB_WORDS` as ``vocab.txt`` (a slow BERT tokenizer, no tokenizer.json)."""
    path = folder / "vocab.txt"
    path.write_text("\n".join(VOCAB_WORDS) + "\n", encoding="utf-8")
    return path


def write_bpe_vocab(folder: Path) -> Path:
    """Write :data:`BPE_VOCAB` as ``vocab.json`` and :data:`BPE_MERGES` as ``merges.txt``."""
    write_json(folder / "vocab.json", {token: i for i, token in enumerate(BPE_VOCAB)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(BPE_MERGES) + "\n", encoding="utf-8")
    return folder


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def rewrite_weights(
    folder: Path, keep: Callable[[str], bool] = lambda name: True, rename: Callable[[str], str] = lambda name: name
) -> Path:
    """Rewrite ``folder/model.safetensors`` keeping the tensors ``keep`` accepts, renamed by ``rename``."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({rename(name): array for name, array in tensors.items() if keep(name)}, path)
    return folder


def folder_with(folder: Path, config: dict[str, Any] | str | None, files: tuple[str, ...] = ()) -> Path:
    """A folder with one tensor, ``config`` as config.json (text as is, None for none), empty ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": np.zeros(4, dtype=np.float32)}, folder / "model.safetensors")
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text, encoding="utf-8")
    for name in files:
        (folder / name).write_text("{}", encoding="utf-8")
    return folder


def siglip(folder: Path, architecture: str = "SiglipModel") -> Path:
    """A tiny SigLIP (``SiglipModel`` or ``SiglipVisionModel``) with its image processor config."""
    import transformers

    vision = dict(image_size=30, patch_size=6, **_ENCODER)
    if architecture == "SiglipVisionModel":
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision))
    else:
        text = dict(vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=None, eos_token_id=None, **_ENCODER)
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    # Written as JSON: instantiating SiglipImageProcessor would need Pillow or torchvision.
    write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 30, "width": 30},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    })
    return _save(model, folder)


def vit(folder: Path) -> Path:
    """A tiny ``ViTModel`` (transformers 5 renames its attention projections on load)."""
    import transformers

    config = transformers.ViTConfig(image_size=30, patch_size=6, initializer_range=0.3, **_ENCODER)
    return _save(transformers.ViTModel(config), folder)


def dinov2(folder: Path) -> Path:
    """A tiny ``Dinov2Model``."""
    import transformers

    config = transformers.Dinov2Config(image_size=30, patch_size=6, initializer_range=0.3, **_ENCODER)
    return _save(transformers.Dinov2Model(config), folder)


def wav2vec2(folder: Path) -> Path:
    """A tiny ``Wav2Vec2Model`` (raw audio in: ``input_values``), with a small feature encoder."""
    import transformers

    config = transformers.Wav2Vec2Config(
        vocab_size=VOCAB, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, **_ENCODER,
    )
    return _save(transformers.Wav2Vec2Model(config), folder)


def mixtral(folder: Path) -> Path:
    """A tiny ``MixtralForCausalLM``: 4 experts per layer, which transformers 5 fuses on load.

    Weights are drawn wide (std 0.3) so that damage to one expert shows in the logits.
    """
    import transformers

    config = transformers.MixtralConfig(
        vocab_size=VOCAB, num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=1, initializer_range=0.1,
        # The experts' grouped matmul wants 16-byte aligned strides: an intermediate size of 37 fails.
        **{**_ENCODER, "intermediate_size": 48},
    )
    return _save(transformers.MixtralForCausalLM(config), folder)


@dataclass(frozen=True)
class Family:
    """A model family as the family-wide tests see it: how to build a tiny one, what its plan keeps.

    Attributes:
        plan: The plan that must detect it.
        build: Writes the tiny checkpoint into a folder.
        default: Glob patterns over source names: exactly the tensors the default parts keep.
        parts: Every part of the plan (together they keep every tensor).
    """

    plan: str
    build: Callable[[Path], Path]
    default: tuple[str, ...]
    parts: tuple[str, ...]


#: Every family, for the tests that run on all of them (tests/test_families.py). A new family adds
#: its builder above and one line here.
FAMILIES: dict[str, Family] = {
    "bert": Family("bert", bert, ("*",), ("all",)),
    "clip": Family("clip", clip, ("vision_model.*", "visual_projection.*"), ("vision", "text")),
    "whisper": Family("whisper", whisper, ("model.encoder.*",), ("encoder", "decoder")),
    "siglip": Family("siglip", siglip, ("vision_model.*",), ("vision", "text")),
    "siglip-vision": Family(
        "siglip", lambda folder: siglip(folder, "SiglipVisionModel"), ("*",), ("vision",)
    ),
}
