"""Size against the byte-plane entropy bound, for each stored dtype, on real weights.

The real MiniLM is converted three ways: to float16 (the default cast), and with `--dtype keep`
from its float32 checkpoint and from a bfloat16 copy of it (every tensor cast to bf16 with
ml_dtypes, round to nearest even, written to a safetensors file). Each output's weights file is
divided by the entropy bound of the tensors it stores, read back from the output: per tensor, the sum
over its little-endian byte planes of the plane's length times its order-0 Shannon entropy. Only the
weights file is measured: tokenizer.json, configs and metadata.json are not weights.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from make_checkpoints import CHECKPOINTS, ensure

#: stored dtype -> the issue's limit on weights ÷ entropy bound.
LIMITS = {"float16": 1.005, "bfloat16": 1.02, "float32": 1.02}


def plane_entropy_bytes(array: np.ndarray) -> float:
    """Order-0 entropy, in bytes, of the little-endian byte planes of ``array``.

    Plane j holds byte j of every element; each plane costs its Shannon entropy
    (over the 256 byte values) times its length, in bits.
    """
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    planes = little.view(np.uint8).reshape(-1, little.dtype.itemsize)
    bits = 0.0
    for j in range(planes.shape[1]):
        counts = np.bincount(planes[:, j], minlength=256)
        p = counts[counts > 0] / planes.shape[0]
        bits += float(-(p * np.log2(p)).sum()) * planes.shape[0]
    return bits / 8


def entropy_bound(output: Path) -> float:
    """The entropy bound, in bytes, of every tensor stored in a streamconv output."""
    import streamconv

    return sum(plane_entropy_bytes(record.array) for record in streamconv.iter_tensors(output))


def weights_bytes(output: Path) -> int:
    """Bytes of an output's weights files (one, or the parts of a split output)."""
    return sum(p.stat().st_size for p in output.glob("weights*.parquet"))


def bf16_copy(source: Path, target: Path) -> Path:
    """``source`` (one model.safetensors) with every floating tensor cast to bfloat16."""
    if (target / "model.safetensors").is_file():
        return target
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v for k, v in tensors.items()},
              str(tmp / "model.safetensors"))
    tmp.rename(target)
    return target


def measure(workdir: Path, quick: bool, convert: Callable[[list[str]], Any]) -> tuple[list[str], list[list[str]]]:
    """Convert, measure and report; the section's markdown lines and its rows of the targets table.

    Args:
        workdir: Where checkpoints and outputs live.
        quick: Use the tiny BERT instead of MiniLM.
        convert: Runs a ``streamconv`` argument list as a whole process (a fresh install's).
    """
    checkpoint = CHECKPOINTS["tiny-bert" if quick else "minilm"]
    source = ensure(checkpoint, workdir)
    work = workdir / "sizes"
    work.mkdir(parents=True, exist_ok=True)
    cases = [
        ("float16 (default)", source, "float16", "float16"),
        ("float32, `--dtype keep`", source, "keep", "float32"),
        ("bfloat16 copy, `--dtype keep`", bf16_copy(source, work / f"{source.name}-bf16"), "keep", "bfloat16"),
    ]
    rows, targets = [], []
    for label, folder, dtype, stored in cases:
        output = work / f"out-{stored}"
        convert(["convert", str(folder), "-o", str(output), "--dtype", dtype, "--force", "-q"])
        size, bound = weights_bytes(output), entropy_bound(output)
        ratio, limit = size / bound, LIMITS[stored]
        verdict = "PASS" if ratio <= limit else "**FAIL**"
        rows.append(f"| {label} | {stored} | {size / 1e6:.2f} | {bound / 1e6:.2f} | {ratio:.4f} | ≤ {limit} | {verdict} |")
        targets.append([f"weights ÷ entropy bound ≤ {limit} ({stored})", f"{checkpoint.label}, {label}",
                        f"{ratio:.4f}", verdict])
    lines = [
        "## Size against the entropy bound, per stored dtype",
        "",
        __doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
        "",
        "| Source | Stored dtype | Weights MB | Entropy bound MB | Weights ÷ bound | Limit | Result |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    return lines, targets
