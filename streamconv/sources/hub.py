"""Hub sources: a repo id resolved to one commit, its small files in the cache, its weights read by ranges.

By default (:func:`open_hub`):

1. ``HfApi.model_info(repo, revision=..., files_metadata=True)`` resolves the revision to a commit
   and lists the files with their sizes and LFS sha256. Every later request names that commit.
2. The small files come through ``snapshot_download`` at that commit, into the Hugging Face cache:
   :data:`SMALL_ALLOW_PATTERNS` (configs, tokenizer, processor and module configs, the safetensors
   index, the few-MB weights of sentence-transformers module folders).
3. The root's ``.safetensors`` files are not downloaded: :mod:`streamconv.sources.remote` reads
   their headers and then only the byte ranges of the tensors the plan keeps.

A snapshot whose weights are already in the local cache is read from there, as a folder is.
``HF_HUB_OFFLINE=1`` and ``download=True`` (``--download``) take the old way,
:func:`download_snapshot`: the whole snapshot into the cache, then read locally. A repo with
``pytorch_model*.bin`` weights and no safetensors is also downloaded that way (a pickle cannot be
read by ranges).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamconv.errors import HubError, SourceNotFoundError
from streamconv.sources.remote import HubFile, HubStats

__all__ = [
    "BIN_ALLOW_PATTERNS",
    "HUB_ALLOW_PATTERNS",
    "REPO_ID",
    "SMALL_ALLOW_PATTERNS",
    "HubSource",
    "download_snapshot",
    "open_hub",
]

#: Fetched first: weights, configs, tokenizer and processor files, module folders.
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*/*.safetensors", "*/*.json"]
#: What range reads fetch whole: everything of :data:`HUB_ALLOW_PATTERNS` but the root's weights
#: (the hub's patterns match across folders: ``*/*.safetensors`` names only module folders' files).
SMALL_ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*/*.safetensors"]
#: Fetched only when the first fetch brought no safetensors weights. Not ``*.bin``: the hub's
#: patterns match across folders, and that would also fetch ``openvino/openvino_model.bin`` or
#: ``training_args.bin``.
BIN_ALLOW_PATTERNS = ["pytorch_model*.bin", "*/pytorch_model.bin", "*.bin.index.json"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Mode = Literal["ranges", "cache", "download", "offline"]


@dataclass
class HubSource:
    """A hub repo resolved to one commit.

    Attributes:
        repo_id: The repository.
        revision: The revision asked for (``None``: the default branch).
        commit: The commit every file comes from.
        folder: The snapshot folder of the local cache that holds the small files (and, but in
            ``ranges`` mode, the weights).
        mode: ``ranges`` (weights read by byte ranges), ``cache`` (already in the local cache),
            ``download`` (downloaded whole first) or ``offline`` (``HF_HUB_OFFLINE``: the cache only).
        files: The weights read by ranges, by path in the repo.
        stats: Bytes fetched by range reads.
    """

    repo_id: str
    revision: str | None
    commit: str
    folder: Path
    mode: Mode
    files: dict[str, HubFile] = field(default_factory=dict)
    stats: HubStats = field(default_factory=HubStats)

    def remote(self, path: Path) -> HubFile | None:
        """The file read by ranges at ``path`` (a path of :attr:`folder`), if it is one."""
        try:
            name = path.relative_to(self.folder).as_posix()
        except ValueError:
            return None
        return self.files.get(name)

    def record(self) -> dict[str, Any]:
        """``metadata.json``'s ``source.hub``: what was asked, what it resolved to, what was checked."""
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "mode": self.mode,
            "bytes_fetched": self.stats.bytes_fetched,
            "sha256_checked": sorted(name for name, f in self.files.items() if f.verified),
        }


def open_hub(repo_id: str, revision: str | None, *, download: bool = False) -> HubSource:
    """Resolve ``repo_id`` at ``revision``, fetch its small files, and describe its weights for range reads.

    Args:
        repo_id: ``org/name``.
        revision: Branch, tag or commit (``None``: the default branch).
        download: Download the whole snapshot into the cache instead (the old way).

    Raises:
        SourceNotFoundError: no such repository or revision; a gated or private repository and no
            token that may read it (exit 2).
        HubError: the hub cannot be reached (exit 7).
    """
    from huggingface_hub import constants

    if constants.is_offline_mode() or download:
        folder, commit = download_snapshot(repo_id, revision)
        return HubSource(repo_id, revision, commit, folder, "offline" if not download else "download")
    info = _model_info(repo_id, revision)
    if info is None:  # the hub cannot be reached: the cache may hold it
        folder, commit = _cached_snapshot(repo_id, revision)
        return HubSource(repo_id, revision, commit, folder, "offline")
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    weights = [n for n in siblings if n.endswith(".safetensors") and "/" not in n]
    if not weights:
        folder, commit = download_snapshot(repo_id, commit)
        return HubSource(repo_id, revision, commit, folder, "download")
    folder = _snapshot(repo_id, commit, SMALL_ALLOW_PATTERNS, quiet=True)
    if all((folder / n).exists() for n in weights):
        return HubSource(repo_id, revision, commit, folder, "cache")
    source = HubSource(repo_id, revision, commit, folder, "ranges")
    for name in weights:
        sibling = siblings[name]
        size = sibling.lfs.size if sibling.lfs is not None else sibling.size
        if size is None:
            raise HubError(repo_id, f"the hub lists {name} without a size", "run again later")
        sha = sibling.lfs.sha256 if sibling.lfs is not None else None
        source.files[name] = HubFile(repo_id, name, commit, size, sha, folder / name, source.stats)
    return source


def download_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """The snapshot folder of ``repo_id`` at ``revision``, weights included, and its commit.

    Raises:
        SourceNotFoundError: no such repository or revision, or not cached while offline.
    """
    folder = _snapshot(repo_id, revision, HUB_ALLOW_PATTERNS)
    if not any(folder.glob("*.safetensors")):
        folder = _snapshot(repo_id, folder.name, BIN_ALLOW_PATTERNS)
    return folder, folder.name


def _model_info(repo_id: str, revision: str | None) -> Any:
    """The repo's info at ``revision`` with file sizes, or ``None`` when the hub cannot be reached."""
    from httpx2 import ConnectError, TimeoutException
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except (ConnectError, TimeoutException):
        return None
    except HfHubHTTPError as exc:
        _raise_for(repo_id, revision, exc)
        raise HubError(repo_id, f"the hub answered {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _raise_for(repo_id: str, revision: str | None, exc: Exception) -> None:
    """Turn huggingface_hub's errors for a missing, gated or private repo into streamconv's."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, RevisionNotFoundError):
        raise SourceNotFoundError(repo_id, "check --revision", problem=f"the hub has no revision {revision!r}") from exc
    if isinstance(exc, GatedRepoError):
        raise SourceNotFoundError(
            repo_id,
            "log in with `hf auth login` or set HF_TOKEN, once access is granted on the model's page",
            problem="a gated repository, and the hub refuses it without a token that was granted access",
        ) from exc
    if isinstance(exc, RepositoryNotFoundError):
        raise SourceNotFoundError(
            repo_id,
            "check the id; a private repository needs a token: log in with `hf auth login` or set HF_TOKEN",
            problem="no such folder, and no such repository on the Hugging Face hub",
        ) from exc


def _cached_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS,
                                        local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise HubError(repo_id, "cannot reach the hub, and the local cache does not hold it") from exc
    return folder, folder.name


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], quiet: bool = False) -> Path:
    """``snapshot_download`` of ``patterns``; ``quiet``: without its bars (the small files of a
    conversion by ranges, whose own bar counts the weights)."""
    # Imported here: huggingface_hub is only needed for hub sources and costs time to import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Silent(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    try:
        extra: dict[str, Any] = {"tqdm_class": Silent} if quiet else {}
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **extra))
    except LocalEntryNotFoundError as exc:
        raise SourceNotFoundError(
            repo_id,
            "not a folder, and not in the local Hugging Face cache while the hub cannot be "
            "reached (HF_HUB_OFFLINE is set or there is no network): download it first",
        ) from exc
    except HfHubHTTPError as exc:
        _raise_for(repo_id, revision, exc)
        raise HubError(repo_id, f"the hub answered {_one_line(exc)}") from exc
