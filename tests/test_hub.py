"""Converting straight from the hub (issue 19), against the loopback hub of tests/hubserver.py.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and its timeouts once, when imported; the
fixture sets the environment and the constants it derived, so these tests run in one process.
Nothing here reaches the internet: the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli import main
from streamconv.errors import CorruptCheckpointError, HubError, SourceNotFoundError
from tests.conftest import all_dtype_tensors, write_raw_safetensors, write_safetensors, write_sharded
from tests.hubserver import HubServer

REPO = "tiny-org/tiny"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
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


def _cache_weights(tmp_path: Path) -> list[Path]:
    """Weight files anywhere in the Hugging Face cache (blobs and snapshots)."""
    return [p for p in (tmp_path / "hf").rglob("*") if p.suffix == ".safetensors" or (p.is_file() and p.stat().st_size > 4096)]


def _cdn(server: HubServer) -> list:
    return [r for r in server.requests if r.origin == "cdn"]


def test_converts_by_range_reads_with_nothing_of_the_weights_on_disk(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    commit = hub.add_repo(REPO, tiny_checkpoint)
    result = streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(tmp_path / "out", names="source")
    for name, array in all_dtype_tensors().items():
        np.testing.assert_array_equal(loaded[name], array)
    assert _cache_weights(tmp_path) == []
    ranges = [r.range for r in _cdn(hub)]
    assert ranges[:2] == ["bytes=0-7", f"bytes=8-{7 + int.from_bytes((tiny_checkpoint / 'model.safetensors').read_bytes()[:8], 'little')}"]
    meta = streamconv.read_metadata(tmp_path / "out")
    assert meta["source"]["revision"] == commit
    assert meta["source"]["hub"] == {
        "repo": REPO, "revision": None, "commit": commit, "mode": "ranges",
        "bytes_fetched": (tiny_checkpoint / "model.safetensors").stat().st_size,
        "sha256_checked": ["model.safetensors"],
    }
    assert meta["source"]["files"] == [{"path": "model.safetensors", "bytes": (tiny_checkpoint / "model.safetensors").stat().st_size}]
    assert result.hub is not None and result.hub["mode"] == "ranges"
