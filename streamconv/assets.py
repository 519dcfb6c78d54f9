"""Files shipped next to the weights: the config and the plan's assets, each with its sha256."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["copy_asset", "write_json", "file_record"]


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` for a file written under ``root``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def copy_asset(source: Path, out_dir: Path, relative: str) -> dict[str, Any]:
    """Copy ``source`` to ``out_dir/relative`` and return its record."""
    target = out_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return file_record(target, out_dir)


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented UTF-8 JSON with a final newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
