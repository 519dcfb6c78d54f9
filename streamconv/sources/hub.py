"""Hub sources: a repo id resolved to one commit, its small files in the cache, its weights read by ranges.

By default (:func:`open_hub`):

1. ``HfApi.model_info(repo, revision=..., files_metadata=True)`` resolves the revision to a commit
   and lists the files with their sizes and LFS sha256. Every later request names that commit.
2. The small files come through ``hf_hub_download`` at that commit, into the Hugging Face cache,
   eight at a time (as ``snapshot_download`` fetches them, without its second listing of the repo):
   :data:`SMALL_ALLOW_PATTERNS` (configs, tokenizer, processor and module configs, the safetensors
   index, the few-MB weights of sentence-transformers module folders). The header of the weights
   file the checkpoint reads first is fetched beside them; a sharded checkpoint's headers all at
   once, when its index is in.
3. The root's ``.safetensors`` files are not downloaded: :mod:`streamconv.sources.remote` reads
   their headers and then only the byte ranges of the tensors the plan keeps.

A repo with ``pytorch_model*.bin`` weights and no safetensors: a pickle cannot be read by
ranges, so :class:`FetchedShards` fetches each shard whole into a temporary folder when it is
first needed (its sha256 checked), keeps the last two, and deletes them all when the conversion
ends. Listing the tensors maps every shard once, so a checkpoint of more than two shards is
fetched about twice; never more than two shards are on disk.

A snapshot whose weights are already in the local cache is read from there, as a folder is.
``HF_HUB_OFFLINE=1`` and ``download=True`` (``--download``) take the old way,
:func:`download_snapshot`: the whole snapshot into the cache, then read locally.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamconv.errors import HubError, SourceNotFoundError, StreamconvError
from streamconv.sources.remote import HubFile, HubStats
from streamconv.sources.safetensors_header import read_weight_map
from streamconv.workers import DaemonWorkers

__all__ = [
    "BIN_ALLOW_PATTERNS",
    "HUB_ALLOW_PATTERNS",
    "REPO_ID",
    "SMALL_ALLOW_PATTERNS",
    "FetchedShards",
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

Mode = Literal["ranges", "shards", "cache", "download", "offline"]
#: Bytes written to a temporary shard per request.
_SHARD_PIECE = 8 * 1024 * 1024


@dataclass
class HubSource:
    """A hub repo resolved to one commit.

    Attributes:
        repo_id: The repository.
        revision: The revision asked for (``None``: the default branch).
        commit: The commit every file comes from.
        folder: The snapshot folder of the local cache that holds the small files (and, but in
            ``ranges`` mode, the weights).
        mode: ``ranges`` (weights read by byte ranges), ``shards`` (``.bin`` shards fetched one
            at a time into a temporary folder), ``cache`` (already in the local cache),
            ``download`` (downloaded whole first) or ``offline`` (``HF_HUB_OFFLINE``: the cache only).
        files: The weights read from the hub (by ranges, or whole for ``.bin``), by path in the repo.
        stats: Bytes fetched.
        shards: For ``shards`` mode, the temporary copies.
    """

    repo_id: str
    revision: str | None
    commit: str
    folder: Path
    mode: Mode
    files: dict[str, HubFile] = field(default_factory=dict)
    stats: HubStats = field(default_factory=HubStats)
    shards: FetchedShards | None = None

    def close(self) -> None:
        """Delete the temporary shards, if any."""
        if self.shards is not None:
            self.shards.close()

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
            **({"shards_fetched": self.shards.fetched} if self.shards is not None else {}),
        }


class FetchedShards:
    """The ``.bin`` shards of a hub source, each fetched whole into a temporary folder when asked for.

    At most :attr:`KEEP` are kept (the one being converted, and the one before it while its last
    chunks are written); :meth:`close` deletes the folder.
    """

    KEEP = 2

    def __init__(self, source: HubSource) -> None:
        self.source = source
        self.folder: Path | None = None
        self.held: list[tuple[Path, Path]] = []  # (path in the snapshot, temporary copy), oldest first
        self.fetched = 0
        self._lock = threading.Lock()

    def local(self, path: Path) -> Path:
        """The temporary copy of the shard at ``path`` (fetched now if not held), or ``path`` itself
        for a file on disk (a module folder's weights)."""
        file = self.source.remote(path)
        if file is None:
            return path
        with self._lock:
            for held, copy in self.held:
                if held == path:
                    return copy
            while len(self.held) >= self.KEEP:
                self.held.pop(0)[1].unlink(missing_ok=True)
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="streamconv-bin-"))
            copy = self.folder / Path(file.name).name
            try:
                with open(copy, "wb") as out:
                    buffer = bytearray(min(_SHARD_PIECE, file.size))
                    for offset in range(0, file.size, _SHARD_PIECE):
                        view = memoryview(buffer)[:min(_SHARD_PIECE, file.size - offset)]
                        file.fetch_into(offset, view)
                        out.write(view)
            except OSError as exc:
                copy.unlink(missing_ok=True)
                raise HubError(file.label, f"cannot write its temporary copy in {self.folder} ({exc.strerror or exc})",
                               "free some space there, or point TMPDIR at a folder with room for two shards") from exc
            self.held.append((path, copy))
            self.fetched += 1
            return copy

    def close(self) -> None:
        with self._lock:
            self.held.clear()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None


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
    mode: Mode = "ranges"
    patterns = SMALL_ALLOW_PATTERNS
    if not weights:
        weights = [n for n in siblings if "/" not in n and fnmatch.fnmatch(n, "pytorch_model*.bin")]
        if not weights:  # nothing to convert: the folder says what it holds (NoWeightsError)
            folder, commit = download_snapshot(repo_id, commit)
            return HubSource(repo_id, revision, commit, folder, "download")
        mode, patterns = "shards", [*SMALL_ALLOW_PATTERNS, "*/pytorch_model.bin"]
    folder = _snapshot_folder(repo_id, commit)
    small = list(_filter(siblings, patterns))
    if all((folder / n).exists() for n in weights):
        _fetch_small(repo_id, commit, small, [])
        return HubSource(repo_id, revision, commit, folder, "cache")
    source = HubSource(repo_id, revision, commit, folder, mode)
    if mode == "shards":
        source.shards = FetchedShards(source)
    for name in weights:
        sibling = siblings[name]
        size = sibling.lfs.size if sibling.lfs is not None else sibling.size
        if size is None:
            raise HubError(repo_id, f"the hub lists {name} without a size", "run again later")
        sha = sibling.lfs.sha256 if sibling.lfs is not None else None
        source.files[name] = HubFile(repo_id, name, commit, size, sha, folder / name, source.stats)
    # The header the checkpoint certainly reads first is fetched beside the small files; a sharded
    # checkpoint's headers once its index is in (all at once rather than one after the other).
    first = "model.safetensors" if "model.safetensors" in source.files else weights[0] if len(weights) == 1 else None
    _fetch_small(repo_id, commit, small, [source.files[first].prefetch_header] if mode == "ranges" and first else [])
    if mode == "ranges" and first is None:
        named = _index_shards(folder / "model.safetensors.index.json")
        _fetch_small(repo_id, commit, [], [f.prefetch_header for n, f in source.files.items() if n in named])
    return source


def _snapshot_folder(repo_id: str, commit: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def _filter(names: Iterable[str], patterns: list[str]) -> Iterable[str]:
    from huggingface_hub.utils import filter_repo_objects

    return filter_repo_objects(names, allow_patterns=patterns)


def _fetch_small(repo_id: str, commit: str, names: list[str], also: list[Callable[[], None]]) -> None:
    """``hf_hub_download`` each of ``names`` at ``commit`` into the cache, and run ``also``, all at
    once (as ``snapshot_download`` does, without its second listing of the repo); the first failure
    in that order is raised, and the jobs after it are not waited for."""
    from huggingface_hub import hf_hub_download

    def download(name: str) -> None:
        with _hub_errors(repo_id, commit, name):
            hf_hub_download(repo_id, name, revision=commit, tqdm_class=_silent_tqdm())

    jobs: list[Callable[[], None]] = [*also, *(functools.partial(download, n) for n in names)]
    if not jobs:
        return
    with DaemonWorkers(min(8, len(jobs)), "streamconv-hub") as pool:
        answers = [pool.submit(job) for job in jobs]
        for answer in answers:
            answer.get()


def _index_shards(index: Path) -> set[str]:
    """The shard names a safetensors index lists; none if it cannot be read (the checkpoint says why)."""
    try:
        return set(read_weight_map(index).values())
    except (OSError, StreamconvError):
        return set()


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


def _silent_tqdm() -> type:
    """huggingface_hub's bar, disabled: the small files of a conversion by ranges, whose own bar
    counts the weights."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Silent(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    return Silent


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """``snapshot_download`` of ``patterns``."""
    # Imported here: huggingface_hub is only needed for hub sources and costs time to import.
    from huggingface_hub import snapshot_download

    with _hub_errors(repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    raise AssertionError("unreachable")


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, name: str | None = None) -> Iterator[None]:
    """huggingface_hub's errors for a missing repo, revision or file (``name``, if one file is
    asked for), or an unreachable hub, as streamconv's."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError as exc:
        raise SourceNotFoundError(
            repo_id,
            "not a folder, and not in the local Hugging Face cache while the hub cannot be "
            "reached (HF_HUB_OFFLINE is set or there is no network): download it first",
        ) from exc
    except HfHubHTTPError as exc:
        _raise_for(repo_id, revision, exc)
        answer = _one_line(exc)
        raise HubError(repo_id, f"the hub answered {answer.rstrip('.')} for {name}" if name else
                       f"the hub answered {answer}") from exc
