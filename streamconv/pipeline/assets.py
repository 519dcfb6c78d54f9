"""Files shipped next to the weights: config, tokenizer, processor and module files, with sha256.

Files present in the checkpoint are copied. A missing ``tokenizer.json`` is built from the
slow-tokenizer files (``vocab.txt``; ``vocab.json`` + ``merges.txt``; a sentencepiece model) with
transformers' fast-tokenizer conversion, then checked against the original tokenizer. Only that
step imports transformers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv._files import file_record
from streamconv.errors import AssetError, MissingDependencyError
from streamconv.plans.probes import SAMPLE_TEXTS

__all__ = [
    "SLOW_TOKENIZER_FILES",
    "TOKENIZER_FILE",
    "build_tokenizer",
    "copy_asset",
    "planned_assets",
    "write_assets",
]

TOKENIZER_FILE = "tokenizer.json"
#: Files a tokenizer.json can be built from: WordPiece, BPE, sentencepiece.
SLOW_TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
#: The other files transformers reads beside them when it builds a tokenizer.
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def copy_asset(source: Path, out_dir: Path, relative: str, root: Path) -> dict[str, Any]:
    """Copy ``source`` (a regular file inside ``root``) to ``out_dir/relative`` and return its record."""
    target = out_dir / relative
    _files.copy_file(source, target, root=root, cap=_cap(relative))
    return file_record(target, out_dir)


def _cap(name: str) -> int | None:
    """The size cap of an asset streamconv parses: JSON files; others are copied as they are."""
    if not name.endswith(".json"):
        return None
    return _files.MAX_TOKENIZER_BYTES if name.endswith(TOKENIZER_FILE) else _files.MAX_JSON_BYTES


def write_assets(
    root: Path, out_dir: Path, names: Sequence[str], *, strict: bool = False, expected: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """Copy the assets ``names`` that ``root`` has into ``out_dir``; build a missing tokenizer.json.

    A ``.json`` asset that is not JSON is not copied. ``tokenizer.json``, when it is one of
    ``names`` and ``root`` lacks it but has slow-tokenizer files, is built with
    :func:`build_tokenizer`. An asset that cannot be copied or built is a warning, or an error
    with ``strict``.

    Args:
        root: The checkpoint folder.
        out_dir: The (staging) output folder.
        names: Asset paths relative to ``root``; missing ones are skipped.
        strict: Raise instead of warning.
        expected: Assets the model family needs; one the checkpoint lacks is a warning (an error
            with ``strict``) naming it.

    Returns:
        The records of the files written (``path``, ``bytes``, ``sha256``; a built tokenizer also
        has ``built_from``), and the warnings.

    Raises:
        AssetError: with ``strict``, an asset that is not JSON or a tokenizer that cannot be built.
        MissingDependencyError: with ``strict``, a tokenizer to build and no transformers.
    """
    return _assets(root, out_dir, names, strict, expected)


def planned_assets(
    root: Path, names: Sequence[str], *, strict: bool = False, expected: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """What :func:`write_assets` would write and warn about, writing nothing (dry runs).

    The same checks, but for building a tokenizer: an asset that is not JSON, a tokenizer to build
    without transformers installed, an expected asset the checkpoint lacks. Whether transformers
    can build a tokenizer is only known by building it.

    Returns:
        ``{"path", "bytes"}`` for each file to copy, ``{"path", "built_from"}`` for a tokenizer.json
        to build, and the warnings the real run would give.

    Raises:
        AssetError, MissingDependencyError: with ``strict``, as :func:`write_assets` would.
    """
    return _assets(root, None, names, strict, expected)


def _assets(
    root: Path, out_dir: Path | None, names: Sequence[str], strict: bool, expected: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`write_assets` (into ``out_dir``), or with ``out_dir=None`` :func:`planned_assets`."""
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    failed: set[str] = set()
    slow_files = [f for f in SLOW_TOKENIZER_FILES if (root / f).exists()]
    for name in dict.fromkeys(names):
        source = root / name
        try:
            if source.exists():
                _check_json(source, root)
                planned = {"path": name, "bytes": source.stat().st_size}
                records.append(planned if out_dir is None else copy_asset(source, out_dir, name, root))
            elif name == TOKENIZER_FILE and slow_files:
                _check_tokenizer_sources(root)
                if out_dir is None:
                    if importlib.util.find_spec("transformers") is None:
                        raise _no_transformers()
                    records.append({"path": name, "built_from": slow_files})
                else:
                    build_tokenizer(root, out_dir / name)
                    records.append({**file_record(out_dir / name, out_dir), "built_from": slow_files})
        except (AssetError, MissingDependencyError) as exc:
            if strict:
                raise
            warnings.append(str(exc))
            failed.add(name)
    written = {record["path"] for record in records}
    for name in expected:
        if name not in written and name not in failed:
            problem = "is missing, and the model's inputs are prepared with it"
            error = AssetError(root / name, problem, f"add {name} to the checkpoint")
            if strict:
                raise error
            warnings.append(str(error))
    return records, warnings


def _check_tokenizer_sources(root: Path) -> None:
    """Refuse, before transformers opens them by name, tokenizer files that are not regular files of
    ``root`` (a FIFO would block it, a symlink would read outside the checkpoint).

    Raises:
        UnsafeInputError: one of them leads outside ``root`` or is not a regular file.
    """
    for name in (*SLOW_TOKENIZER_FILES, *TOKENIZER_SIDE_FILES):
        if (root / name).exists():
            _files.regular(root / name, root=root)


def _no_transformers() -> MissingDependencyError:
    return MissingDependencyError("transformers", f"to build {TOKENIZER_FILE} from the slow-tokenizer files")


def _check_json(path: Path, root: Path) -> None:
    if path.suffix != ".json":
        return
    cap = _cap(path.name)
    assert cap is not None
    _files.read_json(path, root=root, cap=cap,
                     error=lambda file, reason: AssetError(file, f"is {reason}, so it was not copied", "fix or remove the file"))


def build_tokenizer(root: Path, target: Path) -> None:
    """Build ``tokenizer.json`` from the slow-tokenizer files in ``root`` and check it.

    The tokenizer is loaded with transformers' ``AutoTokenizer`` (fast conversion) and its backend
    saved to ``target``; ``tokenizers.Tokenizer.from_file(target)`` must then give the same ids as
    the original tokenizer on :data:`SAMPLE_TEXTS`, or ``target`` is removed.

    Args:
        root: The checkpoint folder (its config and tokenizer files).
        target: Where to write ``tokenizer.json``.

    Raises:
        MissingDependencyError: transformers is not installed.
        AssetError: the tokenizer cannot be converted, or the result encodes differently.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise _no_transformers() from exc
    from tokenizers import Tokenizer

    try:
        # transformers 4 loads the slow Python tokenizer here; transformers 5 has none and loads
        # its own conversion, still an independent reference for the file written below.
        original = AutoTokenizer.from_pretrained(root, use_fast=False, local_files_only=True)
        fast = AutoTokenizer.from_pretrained(root, use_fast=True, local_files_only=True)
        fast.backend_tokenizer.save(str(target))
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError, AttributeError...
        target.unlink(missing_ok=True)
        raise AssetError(
            root,
            f"{TOKENIZER_FILE} could not be built from the slow-tokenizer files "
            f"({type(exc).__name__}: {' '.join(str(exc).split())})",
            f"add a {TOKENIZER_FILE} to the checkpoint",
        ) from exc
    built = Tokenizer.from_file(str(target))
    for text in SAMPLE_TEXTS:
        expected = list(original(text)["input_ids"])
        got = built.encode(text).ids
        if got != expected:
            target.unlink()
            raise AssetError(
                root,
                f"the {TOKENIZER_FILE} built from the slow-tokenizer files encodes {text!r} as "
                f"{got[:12]} where the original tokenizer gives {expected[:12]}, so it was not written",
                f"add a {TOKENIZER_FILE} to the checkpoint",
            )
