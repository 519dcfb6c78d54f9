"""Build the synthetic fp32 safetensors checkpoints the benchmarks convert.

Each checkpoint is a transformers model with random-init weights, made from a
config alone (nothing is downloaded) and saved with ``save_pretrained``, which
writes safetensors (sharded, with ``model.safetensors.index.json``, when a
``max_shard_size`` is given). The torch seed is fixed, so the weights are the
same on every machine and run. A checkpoint already present is not rebuilt.
An entry may reuse another entry's folder (``folder``) to convert the same
checkpoint another way, e.g. the whole of Whisper rather than its encoder.

Usage: python benchmarks/make_checkpoints.py [--workdir DIR] [--only a,b]
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work"
SEED = 1234


@dataclass(frozen=True)
class Checkpoint:
    """One benchmark checkpoint and how each tool is asked to convert it.

    ``plan`` and ``parts`` go to streamconv (``--type``, ``--parts``; no parts: the plan's
    default), ``keep`` to the naive script (state-dict name prefixes; empty: every tensor);
    ``tools`` are the converters run on it; ``folder`` names the checkpoint folder when it is
    another entry's (default: ``name``).
    """

    name: str
    label: str
    model_class: str
    config: Callable[[], object]
    max_shard_size: str | None
    plan: str
    keep: tuple[str, ...]
    parts: tuple[str, ...] = ()
    tools: tuple[str, ...] = ("naive", "streamconv")
    folder: str | None = None

    def path(self, workdir: Path) -> Path:
        """Directory holding this checkpoint under ``workdir``."""
        return workdir / "checkpoints" / (self.folder or self.name)


def _bert_base() -> object:
    from transformers import BertConfig

    return BertConfig()


def _bert_large() -> object:
    from transformers import BertConfig

    return BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def _clip_vit_b32() -> object:
    from transformers import CLIPConfig

    # CLIPConfig defaults are openai/clip-vit-base-patch32: vision 768 x 12 layers,
    # patch 32, image 224; text 512 x 12 layers; projection_dim 512.
    return CLIPConfig()


def _whisper_base() -> object:
    from transformers import WhisperConfig

    return WhisperConfig(
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        num_mel_bins=80,
        vocab_size=51865,
    )


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint("bert-base", "BERT-base, 1 file", "BertModel", _bert_base, None, "bert", ()),
        Checkpoint("bert-base-sharded", "BERT-base, sharded", "BertModel", _bert_base, "100MB", "bert", ()),
        Checkpoint("bert-large", "BERT-large, 1 file", "BertModel", _bert_large, None, "bert", ()),
        Checkpoint("bert-large-sharded", "BERT-large, sharded", "BertModel", _bert_large, "100MB", "bert", ()),
        Checkpoint(
            "clip",
            "CLIP ViT-B/32 (vision)",
            "CLIPModel",
            _clip_vit_b32,
            None,
            "clip",
            ("vision_model.", "visual_projection."),
        ),
        Checkpoint(
            "whisper",
            "Whisper base (encoder)",
            "WhisperForConditionalGeneration",
            _whisper_base,
            None,
            "whisper",
            ("model.encoder.",),
        ),
        # The whole model, as CTranslate2 converts it. "model." is every tensor in the file:
        # state_dict() adds proj_out.weight, a tie to model.decoder.embed_tokens.weight.
        Checkpoint(
            "whisper-full",
            "Whisper base (whole model)",
            "WhisperForConditionalGeneration",
            _whisper_base,
            None,
            "whisper",
            ("model.",),
            parts=("encoder", "decoder"),
            tools=("naive", "streamconv", "ct2"),
            folder="whisper",
        ),
    )
}


def select(only: str | None) -> list[Checkpoint]:
    """Checkpoints named in the comma-separated ``only`` (all when None)."""
    if only is None:
        return list(CHECKPOINTS.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKPOINTS]
    if unknown:
        raise SystemExit(f"unknown checkpoint(s) {unknown}; choose from {list(CHECKPOINTS)}")
    return [CHECKPOINTS[n] for n in names]


def ensure(checkpoint: Checkpoint, workdir: Path) -> Path:
    """Build ``checkpoint`` under ``workdir`` unless present; return its directory.

    The model is saved to a temporary directory that is renamed at the end, so
    an interrupted build is never mistaken for a finished one.
    """
    target = checkpoint.path(workdir)
    if target.is_dir():
        return target
    import torch
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, checkpoint.model_class)(checkpoint.config()).eval()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"max_shard_size": checkpoint.max_shard_size} if checkpoint.max_shard_size else {}
    model.save_pretrained(tmp, **kwargs)
    tmp.rename(target)
    return target


def main() -> None:
    """Build the selected checkpoints and print where they are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKPOINTS)}")
    args = parser.parse_args()
    for checkpoint in select(args.only):
        path = ensure(checkpoint, args.workdir)
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        print(f"{checkpoint.name}: {path} ({size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
