"""Hostile checkpoint folders (docs/reliability.md, "Inputs"): a symlink out of the folder, a FIFO, a
device or a folder where a file belongs, ``.bin`` views that repeat their storage, files over the
caps, names that are not UTF-8.

Each refusal is checked three ways: through the API (the error class and its message), through the
CLI in this process (exit 3, one line on stderr, no traceback) and, for the cases that used to hang
or break the program, as a real ``python -m streamconv`` process. Every time, nothing appears under
the output name. In-process reads run under :func:`no_hang`: a FIFO opened for reading without
``O_NONBLOCK`` would wait forever, and fails the test instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streamconv
from streamconv import _files
from streamconv.cli import main
from streamconv.errors import CorruptCheckpointError, UnsafeInputError
from tests import models
from tests.conftest import write_sharded

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}
#: A process that is still running this long after it started is hung (on a FIFO): the test fails.
PROCESS_TIMEOUT = 60
KIND_MESSAGES = {
    "link": "leads through a symlink to",
    "fifo": "is a FIFO, where a file belongs",
    "folder": "is a folder, where a file belongs",
    "device": "is a character device, where a file belongs",
}


class Hung(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = 20) -> Iterator[None]:
    """Raise :class:`Hung` in the block if it runs longer than ``seconds`` (a blocking open is interrupted)."""
    def expired(signum: int, frame: Any) -> None:
        raise Hung(f"still running after {seconds} s: blocked on a FIFO?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- checkpoints ---


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoints the cases damage: sentence-transformers (with a tokenizer.json, and
    without one so that it is built from vocab.txt) and a sentence-transformers one all in .bin."""
    import torch
    from safetensors.numpy import load_file

    root = tmp_path_factory.mktemp("built")
    st = models.sentence_transformer(root / "st")
    (st / "tokenizer.json").write_text('{"version": "1.0"}')
    slow = models.sentence_transformer(root / "slow")
    binary = models.sentence_transformer_bin(root / "bin")
    torch.save({k: torch.from_numpy(v) for k, v in load_file(binary / "model.safetensors").items()},
               binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    (binary / "tokenizer.json").write_text('{"version": "1.0"}')
    return {"st": st, "slow": slow, "bin": binary}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the checkpoint (never inside it), for symlinks to lead to."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def copy_of(built: dict[str, Path], which: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[which], tmp_path / "model", symlinks=True))


def damage(folder: Path, relative: str, kind: str, outside: Path) -> None:
    """Put ``kind`` where ``folder/relative`` is: a symlink to a copy outside, a FIFO, a folder, a device."""
    path = folder / relative
    if kind == "link":
        target = outside / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        path.symlink_to(target, target_is_directory=target.is_dir())
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("no permission to make a device node here")


# --- what a refusal looks like ---


def nothing_under(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def cli_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    with no_hang():
        code = main(list(argv))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def refused_everywhere(source: Path, out: Path, capsys: pytest.CaptureFixture[str], error: type[Exception],
                       fragment: str, *flags: str) -> None:
    """The API raises ``error`` with ``fragment``; the CLI exits 3 with one line holding it; nothing is written."""
    with no_hang(), pytest.raises(error) as caught:
        streamconv.convert(source, out, dry_run="--dry-run" in flags)
    assert fragment in str(caught.value)
    nothing_under(out)
    code, err = cli_in_process(capsys, "convert", str(source), "-o", str(out), "-q", *flags)
    assert (code, fragment in one_line(err)) == (3, True), err
    nothing_under(out)


def program(source: Path | bytes, out: Path | bytes, *flags: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "streamconv", "convert", os.fsencode(source), "-o", os.fsencode(out),
                           *flags], env=ENV, capture_output=True, timeout=PROCESS_TIMEOUT)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


# --- every file a checkpoint is read from ---

ST_FILES = ["config.json", "tokenizer.json", "model.safetensors", "modules.json", "1_Pooling/config.json",
            "sentence_bert_config.json", "config_sentence_transformers.json", "tokenizer_config.json",
            "2_Dense/model.safetensors", "2_Dense/config.json"]
CASES = [
    *[("st", f, kind) for f in ST_FILES for kind in ("link", "fifo", "folder")],
    *[("st", f, "device") for f in ("config.json", "model.safetensors", "modules.json", "1_Pooling/config.json")],
    ("st", "2_Dense", "link"),
    ("st", "1_Pooling", "link"),
    *[("bin", f, kind) for f in ("pytorch_model.bin", "2_Dense/pytorch_model.bin") for kind in ("link", "fifo", "folder")],
    ("bin", "pytorch_model.bin", "device"),
]


@pytest.mark.parametrize(("which", "relative", "kind"), CASES, ids=[f"{k}-{w}-{r}" for w, r, k in CASES])
def test_a_file_that_is_not_a_regular_file_of_the_folder_is_refused(
    built: dict[str, Path], tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str],
    which: str, relative: str, kind: str,
) -> None:
    folder = copy_of(built, which, tmp_path)
    damage(folder, relative, kind, outside)
    refused_everywhere(folder, tmp_path / "out", capsys, UnsafeInputError, f"{folder / relative}: {KIND_MESSAGES[kind]}")


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_slow_tokenizer_files_are_checked_before_transformers_opens_them(
    built: dict[str, Path], tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """No tokenizer.json: it would be built from vocab.txt, which transformers opens by name."""
    folder = copy_of(built, "slow", tmp_path)
    damage(folder, "vocab.txt", kind, outside)
    refused_everywhere(folder, tmp_path / "out", capsys, UnsafeInputError, f"vocab.txt: {KIND_MESSAGES[kind]}", "--dry-run")


@pytest.mark.parametrize("relative", ["model.safetensors", "modules.json", "1_Pooling/config.json",
                                      "sentence_bert_config.json", "config.json", "tokenizer.json"])
def test_a_fifo_never_blocks_the_program(built: dict[str, Path], tmp_path: Path, outside: Path, relative: str) -> None:
    folder = copy_of(built, "st", tmp_path)
    damage(folder, relative, "fifo", outside)
    code, _, err = program(folder, tmp_path / "out", "-q")
    assert (code, one_line(err)) == (3, f"error: {folder / relative}: is a FIFO, where a file belongs; "
                                         "replace it with a regular file")
    nothing_under(tmp_path / "out")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_source_that_is_a_fifo_or_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    source = tmp_path / "model.safetensors"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        try:
            os.mknod(source, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("no permission to make a device node here")
    refused_everywhere(source, tmp_path / "out", capsys, UnsafeInputError, KIND_MESSAGES[kind])
    code, _, err = program(source, tmp_path / "out", "-q")
    assert code == 3 and KIND_MESSAGES[kind] in one_line(err)


# --- the .bin index names shards inside the folder ---


def bin_shards(built: dict[str, Path], tmp_path: Path, name: str) -> Path:
    """The .bin checkpoint with its weights as one shard named ``name`` by pytorch_model.bin.index.json."""
    import torch

    folder = copy_of(built, "bin", tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    (folder / "pytorch_model.bin").rename(folder / "pytorch_model-00001-of-00001.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {k: name for k in state}}))
    return folder


def test_bin_index_shards_inside_the_folder_are_read(built: dict[str, Path], tmp_path: Path) -> None:
    folder = bin_shards(built, tmp_path, "pytorch_model-00001-of-00001.bin")
    streamconv.convert(folder, tmp_path / "out")
    assert len(streamconv.load(tmp_path / "out")) == len(streamconv.load(tmp_path / "out", names="source")) > 0


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_bin_index_naming_a_shard_outside_is_refused(
    built: dict[str, Path], tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The shard outside is never opened, let alone unpickled."""
    shard = outside / "pytorch_model-00001-of-00001.bin"
    name = {"dotdot": "../outside/pytorch_model-00001-of-00001.bin", "absolute": str(shard),
            "symlink": "linked.bin"}[where]
    folder = bin_shards(built, tmp_path, name)
    shutil.move(folder / "pytorch_model-00001-of-00001.bin", shard)
    if where == "symlink":
        (folder / "linked.bin").symlink_to(shard)
    fragment = "leads through a symlink to" if where == "symlink" else "which is not a plain relative path inside"
    refused_everywhere(folder, tmp_path / "out", capsys, UnsafeInputError, fragment)


@pytest.mark.parametrize("kind", ["fifo", "folder", "link"])
@pytest.mark.parametrize("index", ["safetensors", "bin"])
def test_a_shard_that_is_not_a_regular_file_of_the_folder_is_refused(
    built: dict[str, Path], tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], index: str, kind: str
) -> None:
    if index == "bin":
        folder, shard = bin_shards(built, tmp_path, "pytorch_model-00001-of-00001.bin"), "pytorch_model-00001-of-00001.bin"
    else:
        folder = write_sharded(tmp_path / "model", [{"a": np.ones(4, np.float32)}, {"b": np.zeros(2, np.float32)}])
        (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
        shard = "model-00002-of-00002.safetensors"
    damage(folder, shard, kind, outside)
    refused_everywhere(folder, tmp_path / "out", capsys, UnsafeInputError, f"{folder / shard}: {KIND_MESSAGES[kind]}")


# --- .bin tensors that view less storage than their size ---


def bin_folder(tmp_path: Path, state: dict[str, Any]) -> Path:
    import torch

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("view", ["expand", "overlapping", "expand-2d"])
def test_bin_views_that_repeat_their_storage_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], view: str) -> None:
    """``zeros(1).expand(2**34)`` is 1.6 KB on disk; its declared 64 GiB is never followed (it took 73 s)."""
    import torch

    tensor = {"expand": lambda: torch.zeros(1).expand(2**34),
              "overlapping": lambda: torch.zeros(10).as_strided((3, 3), (1, 1)),
              "expand-2d": lambda: torch.zeros(4, 1).expand(4, 2**20)}[view]()
    folder = bin_folder(tmp_path, {"w": tensor})
    assert (folder / "pytorch_model.bin").stat().st_size < 4096
    refused_everywhere(folder, tmp_path / "out", capsys, CorruptCheckpointError,
                       "elements repeat values of its storage of ")


def test_bin_views_of_a_real_model_are_accepted(tmp_path: Path) -> None:
    """Transposes, slices and tied weights step through distinct values: they convert."""
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    folder = bin_folder(tmp_path, {"t": base.t(), "s": base[1:3, ::2], "a": base, "tied": base})
    streamconv.convert(folder, tmp_path / "out", dtype="float32")
    loaded = streamconv.load(tmp_path / "out")
    assert loaded["t"].tolist() == base.t().tolist() and loaded["s"].tolist() == base[1:3, ::2].tolist()


def test_bin_storage_smaller_than_its_tensor_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    folder = bin_folder(tmp_path, {"w": torch.zeros(1000)})
    whole = folder / "pytorch_model.bin"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(tmp_path / "cut.bin", "w", zipfile.ZIP_STORED) as cut:
        for info in source.infolist():
            data = source.read(info)
            cut.writestr(info, data[:40] if info.filename.endswith("/data/0") else data)
    shutil.move(tmp_path / "cut.bin", whole)
    refused_everywhere(folder, tmp_path / "out", capsys, CorruptCheckpointError, "pytorch_model.bin: torch cannot read it")
    assert "not safetensors" not in capsys.readouterr().err


# --- hub snapshots: symlinks into their own repository's blobs only ---


def snapshot_of(source: Path, repo: Path) -> Path:
    """``source`` laid out as a Hugging Face cache snapshot: every file a relative symlink into ``repo/blobs``."""
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    for file in source.rglob("*"):
        if file.is_file():
            blob = repo / "blobs" / file.relative_to(source).as_posix().replace("/", "--")
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, blob)
            link = snapshot / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_a_hub_snapshot_links_into_its_blobs(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = snapshot_of(built["st"], tmp_path / "hub" / "models--org--tiny")
    code, err = cli_in_process(capsys, "convert", str(snapshot), "-o", str(tmp_path / "out"), "-q")
    assert (code, err) == (0, "")
    assert sorted(streamconv.load(tmp_path / "out")) == sorted(streamconv.load(tmp_path / "out", names="source"))


@pytest.mark.parametrize("relative", ["config.json", "model.safetensors", "2_Dense/model.safetensors"])
def test_a_hub_snapshot_link_into_another_repository_is_refused(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], relative: str
) -> None:
    snapshot = snapshot_of(built["st"], tmp_path / "hub" / "models--org--tiny")
    other = snapshot_of(built["st"], tmp_path / "hub" / "models--org--other")
    (snapshot / relative).unlink()
    (snapshot / relative).symlink_to((other / relative).resolve())
    refused_everywhere(snapshot, tmp_path / "out", capsys, UnsafeInputError, f"{relative}: leads through a symlink to")


# --- files over the caps are refused before they are read ---


@pytest.mark.parametrize(("relative", "cap"), [("config.json", _files.MAX_JSON_BYTES),
                                               ("modules.json", _files.MAX_JSON_BYTES),
                                               ("tokenizer.json", _files.MAX_TOKENIZER_BYTES)])
def test_a_json_file_over_its_cap_is_refused_unread(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], relative: str, cap: int
) -> None:
    """A sparse file: its declared size is refused, and no byte of it is read."""
    folder = copy_of(built, "st", tmp_path)
    with open(folder / relative, "r+b") as f:
        f.truncate(cap + 1)
    refused_everywhere(folder, tmp_path / "out", capsys, UnsafeInputError, f"is {cap + 1:,} bytes, over streamconv's cap of {cap:,}")


def test_a_tokenizer_json_over_the_json_cap_is_admitted(built: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Real tokenizer.json files run to tens of MB, over the cap of other JSON files: their own cap admits them."""
    folder = copy_of(built, "st", tmp_path)
    tokenizer = json.dumps({"version": "1.0", "padding": "x" * 3000})
    (folder / "tokenizer.json").write_text(tokenizer)
    monkeypatch.setattr(_files, "MAX_JSON_BYTES", 2000)
    monkeypatch.setattr(_files, "MAX_TOKENIZER_BYTES", 4000)
    streamconv.convert(folder, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == tokenizer


# --- names that are not UTF-8 ---


def test_a_folder_named_with_bytes_that_are_not_utf8_converts(built: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/model-\xff"))
    shutil.copytree(built["st"], folder)
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/out-\xfe"))
    code, stdout, err = program(folder, out)
    assert (code, err) == (0, "")
    assert "model-\\udcff -> " in stdout.splitlines()[0]  # printed as an escape, never UnicodeEncodeError
    metadata = _files.read_json(out / "metadata.json")  # strict UTF-8 JSON
    assert metadata["source"]["id"] == os.fsdecode(os.fsencode(tmp_path)) + "/model-\\xff"
    streamconv.convert(folder, tmp_path / "api-out")
    assert _files.read_json(tmp_path / "api-out" / "metadata.json")["source"]["path"].endswith("/model-\\xff")


def test_a_refusal_naming_a_path_that_is_not_utf8_is_one_line(built: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/model-\xff"))
    shutil.copytree(built["st"], folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    code, _, err = program(folder, tmp_path / "out", "-q")
    assert code == 3 and one_line(err).endswith("model-\\udcff/config.json: is a FIFO, where a file belongs; "
                                                 "replace it with a regular file")
    nothing_under(tmp_path / "out")




def test_a_refusal_naming_a_path_with_a_line_break_is_one_line(
    built: dict[str, Path], tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(shutil.copytree(built["st"], tmp_path / "model\nsecond line"))
    damage(folder, "config.json", "fifo", outside)
    code, err = cli_in_process(capsys, "convert", str(folder), "-o", str(tmp_path / "out"), "-q")
    assert code == 3 and one_line(err).endswith("model\\nsecond line/config.json: is a FIFO, where a file belongs; "
                                                 "replace it with a regular file")
    nothing_under(tmp_path / "out")
