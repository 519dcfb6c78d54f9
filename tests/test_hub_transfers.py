"""How a conversion from the loopback hub transfers: small files at once, connections kept, hashing
beside the reads."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli import main
from streamconv.constants import HUB_CONNECTIONS
from streamconv.errors import CorruptCheckpointError
from streamconv.sources.read_ahead import read_ahead
from streamconv.sources.remote import HubFile, HubStats
from tests.conftest import hub_checkpoint
from tests.hubserver import HubServer, Logged

REPO = "org/transfers"


def test_range_requests_share_kept_alive_connections(hub: HubServer, tmp_path: Path) -> None:
    folder, tensors = hub_checkpoint(tmp_path / "ckpt", 4)
    hub.add_repo(REPO, folder)
    streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(tmp_path / "out")
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
    ranges = [r.range for r in hub.requests if r.origin == "cdn"]
    assert len(ranges) == 3  # the 8-byte length, the header, then the tensors' segments in one request
    assert hub.cdn_connections() <= HUB_CONNECTIONS  # not one handshake per range


def test_a_sha256_mismatch_fails_the_conversion_though_the_last_segment_was_read_before_its_hash(
    hub: HubServer, tmp_path: Path
) -> None:
    """Segments are hashed on a thread of their own, after the writer got them: the mismatch, known
    at the file's last byte, still fails the conversion and leaves no output."""
    folder, _ = hub_checkpoint(tmp_path / "ckpt", 4)
    hub.add_repo(REPO, folder)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF

    def damage(request: object) -> None:
        if len([r for r in hub.requests if r.origin == "cdn"]) == 1:  # same size and ETag, other bytes
            hub.mutate(REPO, "model.safetensors", bytes(weights))

    hub.hook = damage
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    assert not list(tmp_path.glob("out*"))


def _with_small_files(tmp_path: Path) -> Path:
    folder, _ = hub_checkpoint(tmp_path / "ckpt", 1)
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0}}}))
    (folder / "vocab.txt").write_text("a\n")
    (folder / "special_tokens_map.json").write_text("{}")
    return folder


def test_small_files_come_at_once_after_a_single_listing(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo(REPO, _with_small_files(tmp_path))
    lock, second, asked, overlapped = threading.Lock(), threading.Event(), [], []

    def hold_the_first(request: Logged) -> None:
        if "/resolve/" not in request.path or request.path.endswith(".safetensors"):
            return
        with lock:
            asked.append(request.path)
            first = len(asked) == 1
        if first:
            overlapped.append(second.wait(timeout=5))  # True only if another file was asked meanwhile
        else:
            second.set()

    hub.hook = hold_the_first
    streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    assert overlapped == [True]
    assert [r.path for r in hub.requests if "/api/" in r.path] == [f"/api/models/{REPO}?blobs=true"]  # no tree listing
    assert [p.name for p in (tmp_path / "hf").rglob("vocab.txt")] == ["vocab.txt"]  # in the cache


def test_a_listed_small_file_the_hub_then_lacks_fails_in_one_line(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = hub.add_repo(REPO, _with_small_files(tmp_path))

    def lose(request: Logged) -> None:
        if request.path.endswith("/vocab.txt"):
            hub.repos[REPO].commits[commit].pop("vocab.txt", None)

    hub.hook = lose
    code = main(["convert", REPO, "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 7 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "vocab.txt" in err and "404" in err, err
    assert not list(tmp_path.glob("out*"))


class _Blocky(HubFile):
    """A hub file whose responses come in blocks of random sizes, as sockets hand them out."""

    def __init__(self, data: bytes, seed: int) -> None:
        super().__init__("org/blocky", "model.safetensors", "0" * 40, len(data), hashlib.sha256(data).hexdigest(),
                         Path("model.safetensors"), HubStats())
        self.data, self.rng = data, np.random.default_rng(seed)

    def stream(self, start: int, end: int) -> Generator[bytes, None, None]:
        while start < end:
            step = int(self.rng.integers(1, 70_000))
            yield self.data[start:min(end, start + step)]
            start += step


@pytest.mark.parametrize("seed", range(4))
def test_reads_served_from_blocks_that_cross_segments_and_reads(seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, 3_000_000, np.uint8).tobytes()
    file = _Blocky(data, seed)
    edges = np.sort(np.random.default_rng(seed + 10).choice(np.arange(1, len(data)), 40, replace=False))
    ranges = list(zip([0, *edges], [*edges, len(data)], strict=True))  # the whole file: its sha256 checked
    with read_ahead([(file, start, end) for start, end in ranges], budget=1_000_000):
        for start, end in ranges:
            view = memoryview(bytearray(end - start))
            file.read_into(start, view)
            assert view == data[start:end]
    assert file.verified
