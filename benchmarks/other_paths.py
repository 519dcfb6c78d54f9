"""The other ways in and out, each a whole process under ``/usr/bin/time -v`` beside its baseline in
the same run: ``pytorch_model.bin`` input beside the same model in safetensors, ``export`` back to
safetensors, and ``validate`` (time and peak RSS against the model's float32 size + 1 GiB).

Called by benchmarks/run.py (section ``other``); returns the markdown of its section.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from make_checkpoints import CHECKPOINTS, LlamaShape, ensure, stream_llama

#: A Llama-style bf16 checkpoint of about 1.1 GB (8 layers, 2048 wide) for validate: big enough to
#: show validate's memory, small enough to run transformers on it in a benchmark.
LLAMA_1GB = LlamaShape(hidden=2048, intermediate=5632, layers=8, vocab=32000, heads=16)
LLAMA_QUICK = LlamaShape(hidden=256, intermediate=688, layers=2, vocab=8192, heads=4)
#: The same size whose largest tensors are 512 MiB (embeddings and lm_head: 65536 x 4096, 1 layer,
#: ~1.2 GB): validate's memory must follow the model, not its largest tensor.
LLAMA_WIDE = LlamaShape(hidden=4096, intermediate=1024, layers=1, vocab=65536, heads=32)
LLAMA_WIDE_QUICK = LlamaShape(hidden=512, intermediate=128, layers=1, vocab=8192, heads=4)
GIB = 1024.0


def _streamconv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "streamconv", *map(str, args)]


def _bin_copy(source: Path, target: Path) -> Path:
    """``source`` with its model.safetensors saved as pytorch_model.bin (torch.save of the state dict)."""
    if (target / "pytorch_model.bin").is_file():
        return target
    import torch
    from safetensors.torch import load_file

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.save(load_file(str(source / "model.safetensors")), tmp / "pytorch_model.bin")
    tmp.rename(target)
    return target


def _median(timed: Callable[[list[str]], Any], command: list[str], runs: int) -> tuple[float, float]:
    done = [timed(command) for _ in range(runs)]
    return statistics.median(r.wall_s for r in done), statistics.median(r.rss_mib for r in done)


def _row(label: str, fn: Callable[[], tuple[float, float]], extra: str = "") -> str:
    try:
        wall, rss = fn()
    except Exception as exc:  # a failed tool is a row with its error, not a blank
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"| {label} | failed: {first[:120]} | | {extra} |"
    return f"| {label} | {wall:.2f} s | {rss:.0f} MiB | {extra} |"


def measure(workdir: Path, runs: int, timed: Callable[[list[str]], Any], quick: bool) -> list[str]:
    """Run every measurement of this section; the markdown lines of its report."""
    work = workdir / "other"
    work.mkdir(parents=True, exist_ok=True)
    small = ensure(CHECKPOINTS["tiny-bert" if quick else "minilm"], workdir)
    large = ensure(CHECKPOINTS["tiny-bert" if quick else "bert-large"], workdir)
    llama = work / ("llama-quick" if quick else "llama-1gb")
    shape = LLAMA_QUICK if quick else LLAMA_1GB
    wide = work / ("llama-wide-quick" if quick else "llama-wide")
    wide_shape = LLAMA_WIDE_QUICK if quick else LLAMA_WIDE
    for folder, llama_shape in ((llama, shape), (wide, wide_shape)):
        if not folder.is_dir():
            stream_llama(llama_shape, folder.with_name(folder.name + ".tmp"))
            folder.with_name(folder.name + ".tmp").rename(folder)
    binary = _bin_copy(small, work / f"{small.name}-bin")
    outputs = {name: work / f"{name}-out" for name in ("small", "large", "llama", "wide")}
    for name, source in (("small", small), ("large", large), ("llama", llama), ("wide", wide)):
        timed(_streamconv("convert", source, "-o", outputs[name], "--force", "-q"))

    lines = [
        "## Other paths: `.bin` input, `export`, `validate`",
        "",
        f"Whole processes under `/usr/bin/time -v`, medians of {runs}, in the same run as the tables above.",
        "",
        "| what | wall time | peak RSS | note |",
        "|---|---|---|---|",
        _row(f"convert {small.name} from model.safetensors", lambda: _median(
            timed, _streamconv("convert", small, "-o", work / "st-out", "--force", "-q"), runs), "baseline"),
        _row(f"convert {small.name} from pytorch_model.bin", lambda: _median(
            timed, _streamconv("convert", binary, "-o", work / "bin-out", "--force", "-q"), runs),
            "torch.load(mmap=True, weights_only=True); importing torch is most of the memory"),
        _row(f"export {large.name} (float16 output) to safetensors", lambda: _median(
            timed, _streamconv("export", outputs["large"], "--to", work / "exported", "--force"), runs),
            "target: peak RSS <= 160 MiB"),
    ]
    largest = max(math.prod(dims) for _, dims in wide_shape.tensors()) * 2 / 2**20
    for name, source, label in (("small", small, small.name), ("large", large, large.name),
                                ("llama", llama, f"Llama-style bf16, {shape.nbytes() / 1e9:.2f} GB"),
                                ("wide", wide, f"Llama-style bf16, {wide_shape.nbytes() / 1e9:.2f} GB, "
                                               f"{largest:.0f} MiB tensors")):
        float32_mib = _source_bytes(source) / 2**20 * (2 if name in ("llama", "wide") else 1)
        limit = float32_mib + GIB
        lines.append(_row(f"validate {label}", lambda n=name: _median(timed, _streamconv("validate", outputs[n]), 1),
                          f"limit: float32 size + 1 GiB = {limit:.0f} MiB"))
    lines.append("")
    return lines


def _source_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
