"""Check a converted output against its source: the only module that imports torch and transformers.

Two checks:

1. **Weights**: every stored tensor equals the documented cast of its source tensor, bit for bit
   (``keep``: the source itself; ``float16``: numpy's cast; a tensor kept in float32 for range:
   the source in float32).
2. **Outputs**: the original model (``from_pretrained`` on the source) and the same model with the
   converted weights loaded in (by their ``source_name``) run on the same inputs, and their outputs
   must agree within the tolerance of the stored dtype. Only the parts that were converted are
   probed (a CLIP vision tower, a Whisper encoder...).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamconv.constants import NUMPY_DTYPES
from streamconv.errors import MissingDependencyError, PlanError
from streamconv.reader import describe, iter_tensors, read_metadata
from streamconv.source import open_checkpoint

__all__ = ["Check", "ValidationResult", "validate", "TOLERANCES"]

#: Per stored float dtype: (minimum cosine similarity, maximum error relative to the output's range).
TOLERANCES = {
    "float32": (0.999999, 1e-4),
    "float16": (0.9995, 2e-2),
    "bfloat16": (0.995, 1e-1),
}
SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "streamconv converts checkpoints in bounded memory.",
    "Parquet, zstd and byte planes.",
]


@dataclass
class Check:
    """One comparison: what was compared, the measured figures, and the verdict."""

    name: str
    passed: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationResult:
    """All checks of one validation; ``passed`` is true when every check passed."""

    output_dir: Path
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "source": self.source,
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
        }


def validate(output: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> ValidationResult:
    """Compare a converted output with its source checkpoint.

    Args:
        output: A folder written by ``streamconv convert``.
        source: The checkpoint it came from; by default the ``source.id`` in its metadata.

    Returns:
        The :class:`ValidationResult` (check ``.passed``).

    Raises:
        MissingDependencyError: torch or transformers is not installed.
    """
    output = Path(output)
    metadata = read_metadata(output)
    source_id = os.fspath(source) if source is not None else metadata["source"]["id"]
    result = ValidationResult(output_dir=output, source=source_id)
    result.checks.append(_check_weights(output, source_id))
    result.checks.extend(_check_outputs(output, source_id, metadata))
    return result


def _check_weights(output: Path, source_id: str) -> Check:
    checkpoint = open_checkpoint(source_id)
    by_source = {ref.source_name: ref for ref in checkpoint.tensors}
    source_names = {t["name"]: t["source_name"] for t in describe(output)}
    mismatched, missing, count = [], [], 0
    for name, stored in iter_tensors(output):
        ref = by_source.get(source_names[name])
        if ref is None:
            # Weights from another file of the checkpoint (a sentence-transformers Dense module).
            ref = _module_ref(checkpoint.root, source_names[name])
        if ref is None:
            missing.append(name)
            continue
        original = ref.read().reshape(ref.shape)
        expected = _documented_cast(original, stored.dtype)
        if expected.tobytes() != np.ascontiguousarray(stored).tobytes() or expected.shape != stored.shape:
            mismatched.append(name)
        count += 1
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} differ from the documented cast: {', '.join(mismatched[:5])}")
    if missing:
        problems.append(f"{len(missing)} not found in the source: {', '.join(missing[:5])}")
    detail = "; ".join(problems) or f"{count} tensors equal the documented cast of the source, bit for bit"
    return Check("weights", not problems, detail, {"tensors": count})


def _module_ref(root: Path, source_name: str) -> Any:
    folder, _, name = source_name.partition(".")
    path = root / folder / "model.safetensors"
    if not name or not path.is_file():
        return None
    return next((r for r in open_checkpoint(path).tensors if r.source_name == name), None)


def _documented_cast(original: np.ndarray, stored: np.dtype) -> np.ndarray:
    # Written from docs/format.md's casting rules, not by calling stages.cast: the check must not
    # trust the code it checks.
    if original.dtype == stored or original.dtype.kind in "iub":
        return original
    if original.dtype == NUMPY_DTYPES["bfloat16"]:
        original = original.astype(np.float32)
    return original.astype(stored)


def _check_outputs(output: Path, source_id: str, metadata: dict[str, Any]) -> list[Check]:
    torch, transformers = _import_torch()
    reference = _load_reference(transformers, source_id, metadata)
    converted = copy.deepcopy(reference)
    loaded, unused = _load_converted(torch, converted, output)
    if not loaded:
        return [
            Check(
                "outputs",
                False,
                "no converted tensor has a name of the transformers model, so its outputs cannot be "
                "compared; check that the output comes from this source (--source)",
            )
        ]
    stored = set(metadata.get("stored_dtypes", {})) & set(TOLERANCES)
    dtype = max(stored, key=lambda d: TOLERANCES[d][1], default="float32")
    min_cosine, max_relative = TOLERANCES[dtype]
    checks = []
    for label, probe in _probes(torch, reference, output, loaded):
        with torch.no_grad():
            want, got = probe(reference), probe(converted)
        figures = _compare(want, got)
        passed = figures["cosine"] >= min_cosine and figures["relative_error"] <= max_relative
        checks.append(
            Check(
                f"outputs:{label}",
                passed,
                f"cosine {figures['cosine']:.6f} (min {min_cosine}), max error {figures['relative_error']:.2e} "
                f"of the output range (max {max_relative:.0e}), stored {dtype}, "
                f"{len(loaded)} converted tensors in the model",
                figures,
            )
        )
    if not checks:
        checks.append(Check("outputs", False, "no output probe fits this model; only the weights were checked"))
    if unused:
        checks.append(Check("weights-outside-model", True, f"{len(unused)} tensors are not part of the transformers model (checked as weights only): {', '.join(unused[:3])}"))
    return checks


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "torch", "to validate against the original model", "pip install torch 'streamconv[validate]'"
        ) from exc
    transformers.logging.disable_progress_bar()  # our caller reports; no bars from loading weights
    return torch, transformers


def _load_reference(transformers: Any, source_id: str, metadata: dict[str, Any]) -> Any:
    architectures = metadata.get("architectures") or []
    cls = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), transformers.AutoModel)
    try:
        model = cls.from_pretrained(source_id, torch_dtype="float32")
    except (OSError, ValueError) as exc:
        raise PlanError(f"{source_id}: transformers cannot load this checkpoint ({exc}); validation needs a transformers model") from exc
    return model.eval()


def _load_converted(torch: Any, model: Any, output: Path) -> tuple[list[str], list[str]]:
    """Load the converted tensors into ``model`` by source name; returns (loaded, not in model)."""
    state = model.state_dict()
    names = {t["name"]: t["source_name"] for t in describe(output)}
    update, unused = {}, []
    for name, array in iter_tensors(output):
        source_name = names[name]
        if source_name not in state:
            unused.append(source_name)
            continue
        target = state[source_name]
        if array.dtype == NUMPY_DTYPES["bfloat16"]:
            array = array.astype(np.float32)
        update[source_name] = torch.from_numpy(np.array(array)).to(target.dtype)
    model.load_state_dict(update, strict=False)
    return sorted(update), unused


Probe = Callable[[Any], Any]


def _probes(torch: Any, model: Any, output: Path, loaded: list[str]) -> list[tuple[str, Probe]]:
    """Inputs that exercise the converted parts of ``model``, as functions of a model."""
    generator = torch.Generator().manual_seed(0)
    config = model.config

    def touched(*prefixes: str) -> bool:
        return any(name.startswith(prefixes) for name in loaded)

    probes: list[tuple[str, Probe]] = []

    if config.model_type == "whisper":
        features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions, generator=generator)
        if touched("model.encoder.", "encoder."):
            probes.append(("encoder", lambda m: m.get_encoder()(input_features=features).last_hidden_state))
        if touched("model.decoder.", "decoder."):
            start = torch.tensor([[config.decoder_start_token_id]])
            probes.append(("decoder", lambda m: m(input_features=features, decoder_input_ids=start)[0]))
        return probes

    vision_only = config.model_type == "clip_vision_model"
    vision = config if vision_only else getattr(config, "vision_config", None)
    if vision is not None and (vision_only or touched("vision_model.", "visual_projection.")):
        pixels = torch.randn(1, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
        if hasattr(model, "get_image_features"):
            probes.append(("image", lambda m: _tensor(m.get_image_features(pixel_values=pixels))))
        else:
            probes.append(("image", lambda m: m(pixel_values=pixels)[0]))
    if config.model_type == "clip" and touched("text_model.", "text_projection."):
        ids = _token_ids(torch, output, config.text_config.vocab_size, generator)
        probes.append(("text", lambda m: _tensor(m.get_text_features(input_ids=ids))))
    if vision is not None:
        return probes

    vocab = getattr(config, "vocab_size", None)
    if vocab:
        ids = _token_ids(torch, output, vocab, generator)
        probes.append(("text", lambda m: m(input_ids=ids, attention_mask=torch.ones_like(ids))[0]))
    return probes


def _tensor(value: Any) -> Any:
    # transformers 5 may return a model output object from get_*_features.
    return value if hasattr(value, "shape") else value[0]


def _token_ids(torch: Any, output: Path, vocab_size: int, generator: Any) -> Any:
    tokenizer_file = output / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        encoding = Tokenizer.from_file(str(tokenizer_file)).encode(SAMPLE_TEXTS[0])
        ids = [i for i in encoding.ids if i < vocab_size]
        if ids:
            return torch.tensor([ids])
    return torch.randint(0, vocab_size, (1, 16), generator=generator)


def _compare(want: Any, got: Any) -> dict[str, float]:
    a = want.detach().double().flatten()
    b = got.detach().double().flatten()
    cosine = float((a @ b) / ((a.norm() * b.norm()).clamp_min(1e-30)))
    scale = float(a.abs().max().clamp_min(1e-30))
    return {"cosine": cosine, "max_abs_error": float((a - b).abs().max()), "relative_error": float((a - b).abs().max()) / scale}
