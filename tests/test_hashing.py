"""The SHA-256 thread follows a file another descriptor appends to, whenever it is told it grew."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from streamconv.format.hashing import FileHasher


@pytest.mark.parametrize("tell_every", [1, 3, 1000])
def test_digest_is_the_files_however_often_the_hasher_is_told(tmp_path: Path, tell_every: int) -> None:
    path = tmp_path / "f"
    pieces = [os.urandom(n) for n in (0, 1, 4 << 20, 12345, (4 << 20) + 1, 7)]
    with open(path, "wb", buffering=0) as f:
        hasher = FileHasher(path)
        for i, piece in enumerate(pieces):
            f.write(piece)
            if i % tell_every == 0:
                hasher.grown()
    assert hasher.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_abandon_stops_the_hasher_and_may_repeat(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(9 << 20))
    hasher = FileHasher(path)
    hasher.grown()
    hasher.abandon()
    hasher.abandon()
    assert not hasher._thread.is_alive()
