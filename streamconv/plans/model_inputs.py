"""Probes chosen by what a transformers model takes: its ``main_input_name`` and forward signature.

:func:`input_probes` is what a plan without probes of its own gets. The model's main input picks
the batch, sized from its config (and the sub-config that holds the size, for composite models):

- ``input_ids``: 8 tokenised sentences, padded, with ``attention_mask`` and ``token_type_ids``
  when ``forward`` takes them (and ``decoder_input_ids`` for encoder-decoders);
- ``pixel_values``: 8 varied images of ``num_channels`` x ``image_size`` (NaFlex patches with
  ``spatial_shapes`` for SigLIP2's vision tower);
- ``input_features``: log-mel features of 8 synthetic signals, ``num_mel_bins`` x
  ``2 * max_source_positions`` frames (Whisper-style encoders);
- ``input_values``: 8 synthetic signals of raw audio at 16 kHz (Wav2Vec2, HuBERT...).

A model with both ``get_image_features`` and ``get_text_features`` (SigLIP2) gets an image and a
text probe through them. When nothing fits, :func:`input_probes` says why in one line.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from streamconv.plans.probes import (
    BATCH,
    Probe,
    ProbeContext,
    audio_signals,
    features_tensor,
    image_batch,
    image_probe,
    log_mel_features,
    output_tensor,
    text_batch,
)

__all__ = ["forward_inputs", "input_probes"]

#: Sub-configs searched for a size the top-level config lacks, in order.
SUB_CONFIGS = ("text_config", "vision_config", "audio_config", "encoder", "decoder")
#: Samples of the longest raw-audio probe signal (half a second at 16 kHz).
AUDIO_SAMPLES = 8000
#: Longest token sequence of a text probe.
TEXT_LENGTH = 64


def forward_inputs(function: Any) -> tuple[set[str], set[str]]:
    """The keyword names ``function`` takes, and those it requires (no default), ``self`` aside."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return set(), set()
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return {p.name for p in named}, {p.name for p in named if p.default is p.empty}


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` set on ``config`` or, failing that, on one of its :data:`SUB_CONFIGS`."""
    for holder in (config, *(getattr(config, sub, None) for sub in SUB_CONFIGS)):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if value is not None:
                return value
    return default


def input_probes(context: ProbeContext) -> tuple[list[Probe], str]:
    """Probes for ``context.model`` chosen by what it takes; ``([], why)`` when none fits.

    Args:
        context: The probe context; its ``model`` is the reference transformers model.

    Returns:
        The probes, and an empty string or one line saying why there are none.
    """
    model = context.model
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return _dual_probes(context), ""
    main = getattr(model, "main_input_name", None) or "input_ids"
    takes, required = forward_inputs(model.forward)
    builder = _BUILDERS.get(main)
    kind = type(model).__name__
    if builder is None or (takes and main not in takes):
        return [], (
            f"no output probe fits {kind}: its main input is {main!r} (it requires {', '.join(sorted(required)) or 'nothing'}), "
            "and validation feeds token ids, pixel values, log-mel features or raw audio"
        )
    try:
        label, inputs = builder(context, takes)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        return [], f"no output probe fits {kind}: its {main!r} cannot be sized from its config ({exc})"
    if "decoder_input_ids" in required or (getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" in takes):
        inputs["decoder_input_ids"] = _decoder_prefix(context)
    inputs = {k: v for k, v in inputs.items() if not takes or k in takes}
    if label == "image":  # hidden states and the pooled output side by side
        return [_image_run(context, inputs)], ""
    return [Probe(label, lambda m: output_tensor(m(**inputs)))], ""


def _image_run(context: ProbeContext, inputs: dict[str, Any]) -> Probe:
    torch = context.torch

    def run(model: Any) -> Any:
        out = model(**inputs)
        hidden = output_tensor(out).flatten(1)
        pooled = getattr(out, "pooler_output", None)
        return hidden if pooled is None else torch.cat([hidden, pooled.flatten(1)], dim=1)

    return Probe("image", run)


def _text_inputs(context: ProbeContext, takes: set[str]) -> tuple[str, dict[str, Any]]:
    config = context.model.config
    vocab = _config_value(config, "vocab_size")
    if not vocab:
        raise ValueError("no vocab_size")
    positions = _config_value(config, "max_position_embeddings", "n_positions", default=TEXT_LENGTH + 2)
    types = _config_value(config, "type_vocab_size", default=0) if "token_type_ids" in takes else 0
    pad = _config_value(config, "pad_token_id", default=0)
    return "text", text_batch(context, vocab, min(TEXT_LENGTH, positions - 2), type_vocab_size=types, pad_id=pad)


def _size(value: Any) -> tuple[int, int]:
    """An ``image_size`` as (height, width): an int, a pair, or a ``{"height", "width"}`` dict."""
    if isinstance(value, dict):
        return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _pixel_inputs(context: ProbeContext, takes: set[str]) -> tuple[str, dict[str, Any]]:
    config = context.model.config
    channels = int(_config_value(config, "num_channels", default=3))
    if "spatial_shapes" in takes:  # SigLIP2's NaFlex: patches in, with their grid
        return "image", _naflex_inputs(context, channels)
    image_size = _config_value(config, "image_size")
    if image_size is None:
        raise ValueError("no image_size")
    return "image", {"pixel_values": image_batch(context, channels, _size(image_size))}


def _naflex_inputs(context: ProbeContext, channels: int) -> dict[str, Any]:
    torch, config = context.torch, context.model.config
    patch = int(_config_value(config, "patch_size"))
    side = math.isqrt(int(_config_value(config, "num_patches")))
    images = image_batch(context, channels, (side * patch, side * patch))
    patches = images.reshape(BATCH, channels, side, patch, side, patch).permute(0, 2, 4, 3, 5, 1)
    return {
        "pixel_values": patches.reshape(BATCH, side * side, patch * patch * channels),
        "pixel_attention_mask": torch.ones(BATCH, side * side, dtype=torch.long),
        "spatial_shapes": torch.tensor([[side, side]] * BATCH),
    }


def _features_inputs(context: ProbeContext, takes: set[str]) -> tuple[str, dict[str, Any]]:
    config = context.model.config
    mel_bins, positions = _config_value(config, "num_mel_bins"), _config_value(config, "max_source_positions")
    if not mel_bins or not positions:
        raise ValueError("log-mel features need num_mel_bins and max_source_positions")
    return "log-mel", {"input_features": log_mel_features(context, int(mel_bins), 2 * int(positions))}


def _audio_inputs(context: ProbeContext, takes: set[str]) -> tuple[str, dict[str, Any]]:
    """8 signals normalised as Wav2Vec2FeatureExtractor does (zero mean, unit variance), zero-padded."""
    import numpy as np

    torch = context.torch
    signals = audio_signals(context.seed, longest=AUDIO_SAMPLES)
    values = np.zeros((len(signals), AUDIO_SAMPLES), dtype=np.float32)
    mask = np.zeros((len(signals), AUDIO_SAMPLES), dtype=np.int64)
    for i, signal in enumerate(signals):
        values[i, : len(signal)] = (signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)
        mask[i, : len(signal)] = 1
    inputs = {"input_values": torch.from_numpy(values)}
    # Models whose feature extractor sets return_attention_mask (layer-norm feature encoders) take it.
    if "attention_mask" in takes and getattr(context.model.config, "feat_extract_norm", "") == "layer":
        inputs["attention_mask"] = torch.from_numpy(mask)
    return "audio", inputs


def _decoder_prefix(context: ProbeContext) -> Any:
    torch, config = context.torch, context.model.config
    vocab = int(_config_value(config, "vocab_size", default=2))
    start = _config_value(config, "decoder_start_token_id", "bos_token_id", "pad_token_id", default=0)
    tokens = torch.randint(0, vocab, (BATCH, 4), generator=context.generator())
    return torch.cat([torch.full((BATCH, 1), int(start)), tokens], dim=1)


def _dual_probes(context: ProbeContext) -> list[Probe]:
    """Image and text features of a two-tower model (SigLIP2...), through its own feature methods."""
    model = context.model
    probes = []
    image_takes, _ = forward_inputs(model.get_image_features)
    if "spatial_shapes" in image_takes:
        vision = getattr(model.config, "vision_config", model.config)
        pixels = _naflex_inputs(context, int(getattr(vision, "num_channels", 3)))
        probes.append(Probe("image", lambda m: features_tensor(m.get_image_features(**pixels))))
    else:
        vision = getattr(model.config, "vision_config", model.config)
        probes.append(image_probe(context, int(getattr(vision, "num_channels", 3)), _size(vision.image_size)))
    text_takes, _ = forward_inputs(model.get_text_features)
    _, batch = _text_inputs(context, text_takes)
    batch = {k: v for k, v in batch.items() if k in text_takes}
    probes.append(Probe("text", lambda m: features_tensor(m.get_text_features(**batch))))
    return probes


_BUILDERS: dict[str, Callable[[ProbeContext, set[str]], tuple[str, dict[str, Any]]]] = {
    "input_ids": _text_inputs,
    "pixel_values": _pixel_inputs,
    "input_features": _features_inputs,
    "input_values": _audio_inputs,
}
