"""Input batches for validation probes, shared by the plans: sentences, token batches, images, audio.

Every helper is seeded and returns a batch of :data:`BATCH` varied items. torch comes through the
:class:`~streamconv.plans.base.ProbeContext`; transformers and tokenizers are imported inside the
functions that need them, so importing a plan stays cheap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BATCH",
    "SAMPLE_TEXTS",
    "Probe",
    "ProbeContext",
    "audio_signals",
    "features_tensor",
    "image_batch",
    "image_probe",
    "log_mel_features",
    "near_duplicates",
    "output_tensor",
    "sentences",
    "text_batch",
    "two_tower_probes",
]

#: Texts a built tokenizer.json must encode to the same ids as the original tokenizer.
SAMPLE_TEXTS = (
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Naïve café owners in Zürich paid 1,234.56 CHF — 東京 too?",
    "  spaces   and\ttabs\nand newlines  ",
    "UPPER lower MiXeD don't won't 42nd",
)


@dataclass(frozen=True)
class Probe:
    """One batch of inputs that validation feeds the model, and how to read its output.

    Attributes:
        label: What the output is (``text``, ``image``, ``encoder``...).
        run: ``run(model)`` returns the output tensor to compare; it holds its inputs.
        needs: Source-name prefixes; the probe runs only if a converted tensor starts with one.
        expected: Optional ``expected()``: the output as another library computes it from the
            source (sentence-transformers' ``encode``), compared with ``run`` on the reference model
            to check the probe itself.
        ranking: The output is a batch of embeddings whose nearest neighbours (cosine) must stay
            the same: validation also counts, per item, how many of its top 10 it keeps.
    """

    label: str
    run: Callable[[Any], Any]
    needs: tuple[str, ...] = ()
    expected: Callable[[], Any] | None = None
    ranking: bool = False


@dataclass(frozen=True)
class ProbeContext:
    """What a plan's probes can use: torch, the reference model, the output folder, a seed.

    Attributes:
        torch: The torch module (plans never import torch themselves).
        model: The reference model (its ``config`` says sizes).
        output: The converted output folder (its ``tokenizer.json`` and processor configs).
        metadata: The output's ``metadata.json``.
        seed: The seed every random input is drawn from.
        source: The source checkpoint folder (for probes that compare with another library).
        extras: Tensors a probe uses outside the transformers model (a sentence-transformers
            Dense layer), by source name, as torch tensors: validation fills it with the source's
            values while computing the reference outputs, then with the output's.
    """

    torch: Any
    model: Any
    output: Path
    metadata: dict[str, Any]
    seed: int = 0
    source: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def generator(self) -> Any:
        """A fresh torch generator seeded with :attr:`seed`."""
        return self.torch.Generator().manual_seed(self.seed)


#: Items in every probe batch.
BATCH = 8
_WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "tired",
    "engineers", "convert", "large", "checkpoints", "into", "compact", "parquet", "weights", "before",
    "lunch", "on", "a", "rainy", "tuesday", "in", "zürich,", "hello", "world!", "naïve", "café", "owners",
    "paid", "1,234.56", "francs;", "don't", "stop,", "42nd", "street,", "東京",
]


def sentences(seed: int = 0, count: int = BATCH, longest: int = 24) -> list[str]:
    """``count`` seeded sentences of different lengths (1 to ``longest`` words), shortest first."""
    rng = random.Random(seed)
    lengths = sorted([1, longest, *rng.sample(range(2, longest), count - 2)])
    return [" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "." for n in lengths]


def near_duplicates(seed: int = 0, count: int = 16) -> list[str]:
    """``count`` seeded sentences, each followed by three near-duplicates (one word replaced, one
    word dropped, other punctuation and case): ``4 * count`` texts whose nearest neighbours are
    close calls, where a ranking moves before a cosine does."""
    rng = random.Random(seed + 1)
    texts = []
    for base in sentences(seed + 1, count, longest=count + 8)[-count:]:
        words = base.rstrip(".").split(" ")
        if len(words) < 3:
            words += rng.sample(_WORDS, 3 - len(words))
        replaced = list(words)
        replaced[rng.randrange(len(words))] = rng.choice(_WORDS)
        dropped = list(words)
        del dropped[rng.randrange(1, len(words))]
        texts += [" ".join(words) + ".", " ".join(replaced) + ".", " ".join(dropped) + ".",
                  " ".join(words).lower() + "!"]
    return texts


def text_batch(
    context: ProbeContext, vocab_size: int, max_length: int, type_vocab_size: int = 0, pad_id: int = 0,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """A padded batch of :func:`sentences` as model inputs: ``input_ids``, ``attention_mask``, maybe ``token_type_ids``.

    The sentences go through the output's ``tokenizer.json`` (the tokenizers library); without one,
    seeded random ids of the same varied lengths. With ``type_vocab_size > 1`` each item's second
    half gets token type 1 (a sentence pair), so token types vary too.

    Args:
        context: The probe context (torch, output folder, seed).
        vocab_size: Ids at or above this are replaced by ``pad_id``'s neighbour (tiny test vocabularies).
        max_length: Longest sequence the model takes (position embeddings).
        type_vocab_size: The model's number of token types (0 or 1: no ``token_type_ids``).
        pad_id: The padding id.
        texts: The texts to tokenise; :func:`sentences` of the context's seed by default.
    """
    torch = context.torch
    rows = _token_rows(context, vocab_size, max_length, texts or sentences(context.seed))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if type_vocab_size and type_vocab_size > 1:
        types = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            types[i, len(row) // 2 : len(row)] = 1 + i % (type_vocab_size - 1)
        batch["token_type_ids"] = types
    return batch


def _token_rows(context: ProbeContext, vocab_size: int, max_length: int, texts: list[str]) -> list[list[int]]:
    tokenizer_file = context.output / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        rows = [[i if i < vocab_size else i % vocab_size for i in e.ids] for e in tokenizer.encode_batch(texts)]
        if all(rows):
            return rows
    gen = context.generator()
    lengths = [max(2, min(max_length, 2 + 2 * len(t.split()))) for t in texts]
    return [context.torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def image_batch(context: ProbeContext, channels: int, size: int | tuple[int, int], count: int = BATCH) -> Any:
    """``count`` seeded, varied, normalised images ``(count, channels, height, width)``.

    ``size`` is the side of a square image or ``(height, width)``. Noise at two scales, gradients,
    checkerboards of different periods and flat fields with noise, each with its own brightness
    and contrast: different inputs, not one image repeated.
    """
    torch = context.torch
    gen = context.generator()
    height, width = (size, size) if isinstance(size, int) else size
    size = max(height, width)
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    images = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            base = torch.randn(channels, height, width, generator=gen)
        elif kind == 1:
            angle = float(torch.rand(1, generator=gen)) * 6.283
            base = (x * torch.cos(torch.tensor(angle)) + y * torch.sin(torch.tensor(angle))).expand(channels, -1, -1)
        elif kind == 2:
            period = 2 + i
            base = (((x * size).long() // period + (y * size).long() // period) % 2).float().expand(channels, -1, -1)
        else:
            base = torch.rand(channels, 1, 1, generator=gen) + 0.3 * torch.randn(channels, height, width, generator=gen)
        scale = 0.5 + float(torch.rand(1, generator=gen)) * 1.5
        shift = float(torch.randn(1, generator=gen)) * 0.5
        images.append(base * scale + shift)
    return torch.stack(images)


def output_tensor(value: Any) -> Any:
    """The first tensor of a model's return value (``last_hidden_state``, ``logits``...)."""
    return value if hasattr(value, "shape") else value[0]


def features_tensor(value: Any) -> Any:
    """The projected features of ``get_image_features``/``get_text_features``.

    transformers 4 returns the tensor; transformers 5 an output whose ``pooler_output`` holds it.
    """
    if hasattr(value, "shape"):
        return value
    pooled = getattr(value, "pooler_output", None)
    return pooled if pooled is not None else value[0]


def image_probe(
    context: ProbeContext, channels: int, size: int | tuple[int, int], needs: tuple[str, ...] = (), label: str = "image"
) -> Probe:
    """Image features through the projection (``get_image_features``); for a bare vision tower, its
    hidden states and pooled output side by side, so the pooling head is exercised too.

    For any image tower (CLIP, SigLIP...): give the vision config's sizes.
    """
    pixels = image_batch(context, channels, size)
    torch = context.torch

    def run(model: Any) -> Any:
        if hasattr(model, "get_image_features"):
            return features_tensor(model.get_image_features(pixel_values=pixels))
        out = model(pixel_values=pixels)
        hidden = output_tensor(out).flatten(1)
        pooled = getattr(out, "pooler_output", None)
        return hidden if pooled is None else torch.cat([hidden, pooled.flatten(1)], dim=1)

    return Probe(label, run, needs=needs)


def two_tower_probes(
    context: ProbeContext, vision_only_type: str, vision_prefixes: tuple[str, ...], text_prefixes: tuple[str, ...]
) -> list[Probe]:
    """CLIP-style image/text encoders: 8 images through the image features; 8 texts through the
    text features when the text tower was converted. A vision-only model (``vision_only_type``)
    gets the image probe alone, run whatever was converted."""
    config = context.model.config
    vision_only = config.model_type == vision_only_type
    vision = config if vision_only else config.vision_config
    probes = [image_probe(context, vision.num_channels, vision.image_size, needs=() if vision_only else vision_prefixes)]
    if not vision_only:
        text = config.text_config
        batch = text_batch(
            context, text.vocab_size, text.max_position_embeddings, pad_id=getattr(text, "pad_token_id", None) or 0
        )

        def run(model: Any) -> Any:
            return features_tensor(model.get_text_features(**batch))

        probes.append(Probe("text", run, needs=text_prefixes))
    return probes


def audio_signals(seed: int = 0, sampling_rate: int = 16000, longest: int = 16000, count: int = BATCH) -> list[Any]:
    """``count`` seeded synthetic signals of different lengths: mixed sines, a chirp and noise (float32 numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    signals = []
    for i in range(count):
        n = int(longest * (0.3 + 0.7 * (i + 1) / count))
        t = np.arange(n) / sampling_rate
        freqs = rng.uniform(80, sampling_rate / 4, size=3)
        wave = sum(rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs)
        wave = wave + 0.2 * np.sin(2 * np.pi * (100 + 2000 * t) * t) * (i % 2)
        wave = wave + rng.normal(0, 0.02 + 0.02 * i, size=n)
        signals.append(wave.astype(np.float32))
    return signals


def log_mel_features(context: ProbeContext, num_mel_bins: int, frames: int) -> Any:
    """Log-mel features ``(8, num_mel_bins, frames)`` of :func:`audio_signals`, by WhisperFeatureExtractor.

    The extractor comes from the output's ``preprocessor_config.json`` when there is one, else is
    built from the model's sizes; signals are padded to ``frames`` frames.
    """
    from transformers import WhisperFeatureExtractor

    config_file = context.output / "preprocessor_config.json"
    if config_file.is_file():
        extractor = WhisperFeatureExtractor.from_pretrained(str(context.output))
    else:
        extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    samples = frames * extractor.hop_length
    signals = audio_signals(context.seed, extractor.sampling_rate, longest=samples)
    features = extractor(
        signals, sampling_rate=extractor.sampling_rate, padding="max_length", max_length=samples, return_tensors="np"
    ).input_features
    return context.torch.from_numpy(features[:, :, :frames]).float()
