"""A real memory cap: a 1.33 GB float32 checkpoint (BERT-large's size) converts under RLIMIT_DATA
(docs/reliability.md, "Memory").

RLIMIT_DATA counts every private writable mapping: the heap, malloc's arenas, thread stacks and
allocator reservations, not only what is touched. The limit is set in the child process itself
before streamconv is imported (`prlimit` on a running Python crashes it here).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

LIMIT_MIB = 224  # the lowest that works here is 184 MiB (176 passes two runs in three)
BLOCK = 16 << 20  # one random block of float32, written again and again
SHAPES = {"embeddings.word_embeddings.weight": (30522, 1024),
          **{f"encoder.layer.{i}.weight": (1024, 4096) for i in range(72)}}

CHILD = """
import resource, sys
limit = int(sys.argv[3]) << 20
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
import streamconv
result = streamconv.convert(sys.argv[1], sys.argv[2], workers=2)
print(result.tensor_count, result.parameter_count)
"""


def write_big_checkpoint(path: Path) -> int:
    """Write model.safetensors from SHAPES: the header, then the data piece by piece from one block."""
    block = np.random.default_rng(0).standard_normal(BLOCK // 4, dtype=np.float32).tobytes()
    header, offset = {}, 0
    for name, shape in SHAPES.items():
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            piece = block[:min(len(block), left)]
            f.write(piece)
            left -= len(piece)
    return offset


def test_a_1_3_gb_checkpoint_converts_under_224_mib_of_rlimit_data(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.mkdir()
    size = write_big_checkpoint(source / "model.safetensors")
    assert size >= 1 << 30
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "STREAMCONV_DISABLE_PROGRESS_BARS": "1",
           # numpy's OpenBLAS starts a thread with its buffers per core at import (~40 MB each):
           # pinned, so the figure is the same on machines with more cores.
           "OPENBLAS_NUM_THREADS": "2"}
    env.pop("ARROW_DEFAULT_MEMORY_POOL", None)  # streamconv's choice (jemalloc here)
    done = subprocess.run([sys.executable, "-c", CHILD, str(source), str(tmp_path / "out"), str(LIMIT_MIB)],
                          capture_output=True, text=True, env=env, timeout=300)
    (source / "model.safetensors").unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(SHAPES)), str(size // 4)]
    assert (tmp_path / "out" / "weights.parquet").stat().st_size > 0
