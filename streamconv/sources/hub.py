"""Hub sources: a repo id resolved to a snapshot folder of the local Hugging Face cache.

``huggingface_hub.snapshot_download`` fetches what is missing (or, with ``HF_HUB_OFFLINE=1``, finds
the snapshot in the cache alone). Safetensors weights are fetched first, with the configs,
tokenizer and processor files and the sentence-transformers module folders; only when the snapshot
then holds no safetensors at its root are the PyTorch ``pytorch_model*.bin`` files fetched, from
the same commit. Other pickles and framework-specific weights are never fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamconv.errors import SourceNotFoundError

__all__ = ["BIN_ALLOW_PATTERNS", "HUB_ALLOW_PATTERNS", "REPO_ID", "download_snapshot"]

#: Fetched first: weights, configs, tokenizer and processor files, module folders.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*/*.safetensors", "*/*.json"]
#: Fetched only when the first fetch brought no safetensors weights. Not ``*.bin``: the hub's
#: patterns match across folders, and that would also fetch ``openvino/openvino_model.bin`` or
#: ``training_args.bin``.
BIN_ALLOW_PATTERNS = ["pytorch_model*.bin", "*/pytorch_model.bin", "*.bin.index.json"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def download_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """The snapshot folder of ``repo_id`` at ``revision``, and its commit.

    Raises:
        SourceNotFoundError: no such repository or revision, or not cached while offline.
    """
    folder = _snapshot(repo_id, revision, HUB_ALLOW_PATTERNS)
    if not any(folder.glob("*.safetensors")):
        folder = _snapshot(repo_id, folder.name, BIN_ALLOW_PATTERNS)
    return folder, folder.name


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    # Imported here: huggingface_hub is only needed for hub sources and costs time to import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError as exc:
        raise SourceNotFoundError(
            repo_id, f"the hub has no revision {revision!r}; check --revision"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise SourceNotFoundError(
            repo_id, "no such folder, and no such repository on the Hugging Face hub"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise SourceNotFoundError(
            repo_id,
            "not a folder, and not in the local Hugging Face cache while the hub cannot be "
            "reached (HF_HUB_OFFLINE is set or there is no network): download it first",
        ) from exc
