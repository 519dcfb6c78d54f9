"""What a conversion wrote, and the ``metadata.json`` built from it: one schema for both."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streamconv._version import __version__
from streamconv.format.schema import METADATA_FILENAME, WEIGHTS_FILENAME, version_for
from streamconv.sources.checkpoint import Checkpoint

__all__ = ["ConversionResult", "provenance"]


@dataclass
class ConversionResult:
    """What a conversion wrote (or, for a dry run, would write).

    Its :meth:`to_dict` is the body of ``metadata.json`` (docs/format.md lists every key).

    Attributes:
        source: The checkpoint as given (path or repo id).
        output_dir: The output folder.
        model_type: The plan used.
        detected: True if the plan's detection claims the checkpoint (False for ``generic``, and
            for a plan forced on a checkpoint that says nothing of itself).
        parts: The plan parts converted.
        source_layout: Which layout of the plan's family the checkpoint has.
        dtype: The dtype policy (``float16``, ``keep``...).
        compression: ``zstd`` or ``none``.
        level: The zstd level (``None`` without compression).
        chunk_size: Largest chunk, in source bytes.
        tensor_count: Tensors written.
        chunk_count: Parquet rows written.
        parameter_count: Elements over all tensors.
        source_bytes: Bytes of the converted tensors in the source.
        output_bytes: Size of the weights file (an estimate for a dry run).
        ratio: ``source_bytes / output_bytes``.
        stored_dtypes: How many tensors are stored in each dtype.
        seconds: Wall time of the conversion.
        warnings: Things the user should know (fp16 overflow kept in float32, unmatched patterns,
            generic used as fallback, a missing or unbuildable asset, leftovers removed).
        assets: Files written next to the weights, with sha256 (for a dry run: the planned files).
        files: The weights files, with size and sha256 (several for a split output, whose
            ``weights.parquet.index.json`` lists them with their tensors).
        plan_metadata: The plan's own keys (``sentence_transformers``: pooling...), merged at the
            top level of ``metadata.json``.
        dry_run: True if nothing was written.
        tensors: For a dry run, the planned tensors (name, source name, shape, dtypes, bytes).
        include: The ``--include`` patterns (source names), so validation can tell what was kept.
        exclude: The ``--exclude`` patterns.
        hub: For a hub source, ``source.hub`` of metadata.json (:meth:`HubSource.record`): repo,
            revision, commit, how the weights were read, bytes fetched, files checked by sha256.
        validation: With ``--validate``, the validation report (``passed``, checks with figures
            and limits); ``None`` (and absent from metadata.json) otherwise.
        quantization: With ``dtype="int8"``, the rule (block, scale dtype, rounding, error
            budget, smallest tensor), the number of tensors quantized and ``kept_float16``, the
            weight matrices kept in float16 with the reason; ``None`` (absent) otherwise.
    """

    source: str
    output_dir: Path
    model_type: str
    detected: bool
    parts: list[str]
    source_layout: str
    dtype: str
    compression: str
    level: int | None
    chunk_size: int
    tensor_count: int = 0
    chunk_count: int = 0
    parameter_count: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    ratio: float = 0.0
    stored_dtypes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    plan_metadata: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    tensors: list[dict[str, Any]] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    hub: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None

    @property
    def weights_path(self) -> Path:
        """The Parquet weights file, or for a split output its ``weights.parquet.index.json``."""
        split = bool(self.files) and self.files[0]["path"] != WEIGHTS_FILENAME
        return self.output_dir / ("weights.parquet.index.json" if split else WEIGHTS_FILENAME)

    @property
    def metadata_path(self) -> Path:
        """``metadata.json``."""
        return self.output_dir / METADATA_FILENAME

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: paths as strings, the plan's keys at the top level."""
        data = dataclasses.asdict(self)
        data["output_dir"] = str(self.output_dir)
        data.update(data.pop("plan_metadata"))
        if not self.dry_run:
            del data["tensors"], data["dry_run"]
        if self.validation is None:
            del data["validation"]
        if self.hub is None:
            del data["hub"]
        if self.quantization is None:
            del data["quantization"]
        return data

    def metadata(self, checkpoint: Checkpoint, source_files: list[Path]) -> dict[str, Any]:
        """The ``metadata.json`` of this result: format header, provenance, then :meth:`to_dict`."""
        body = self.to_dict()
        del body["source"], body["output_dir"]
        return {
            "format": "streamconv",
            "format_version": version_for(self.dtype == "int8"),
            "streamconv_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": provenance(checkpoint, source_files),
            **body,
        }


def provenance(checkpoint: Checkpoint, files: list[Path]) -> dict[str, Any]:
    """Where the weights came from: as given, resolved, hub repo and commit, files and config."""
    config = checkpoint.config or {}
    return {
        "id": checkpoint.source,
        "path": str(checkpoint.root.resolve()),
        "repo_id": checkpoint.source if checkpoint.revision else None,
        "revision": checkpoint.revision,
        "config_model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "files": [
            {"path": p.relative_to(checkpoint.root).as_posix(), "bytes": _size(checkpoint, p)} for p in files
        ],
        **({"hub": checkpoint.hub.record()} if checkpoint.hub is not None else {}),
    }


def _size(checkpoint: Checkpoint, path: Path) -> int:
    """A source file's size: from the hub for one read by ranges (it is not on disk)."""
    remote = checkpoint.hub.remote(path) if checkpoint.hub is not None else None
    return remote.size if remote is not None else path.stat().st_size
