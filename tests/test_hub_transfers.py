"""How a conversion from the loopback hub transfers: connections kept, hashing beside the reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.constants import HUB_CONNECTIONS, HUB_SEGMENT_BYTES
from streamconv.errors import CorruptCheckpointError
from tests.conftest import write_safetensors
from tests.hubserver import HubServer

REPO = "org/transfers"


def _checkpoint(tmp_path: Path, n: int = 4) -> tuple[Path, dict[str, np.ndarray]]:
    """Several segments' worth of weights (2 MiB a tensor), and a config."""
    rng = np.random.default_rng(5)
    tensors = {f"layer.{i}.weight": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(n)}
    folder = tmp_path / "ckpt"
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    return folder, tensors


def test_range_requests_share_kept_alive_connections(hub: HubServer, tmp_path: Path) -> None:
    folder, tensors = _checkpoint(tmp_path)
    hub.add_repo(REPO, folder)
    streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(tmp_path / "out")
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
    requests = [r for r in hub.requests if r.origin == "cdn"]
    assert len(requests) >= 2 + (folder / "model.safetensors").stat().st_size // HUB_SEGMENT_BYTES
    assert hub.cdn_connections() <= HUB_CONNECTIONS  # not one handshake per range


def test_a_sha256_mismatch_fails_the_conversion_though_the_last_segment_was_read_before_its_hash(
    hub: HubServer, tmp_path: Path
) -> None:
    """Segments are hashed on a thread of their own, after the writer got them: the mismatch, known
    at the file's last byte, still fails the conversion and leaves no output."""
    folder, _ = _checkpoint(tmp_path)
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
