"""Check a converted output against its source: the only package that imports torch and transformers.

Checks, in order (each a :class:`Check` of the :class:`ValidationReport`):

0. ``source``, only when it fails: the source is not the checkpoint the output was converted from
   (another model type, or many stored tensors it does not have); nothing else is then checked.
1. ``names``: each stored name is the plan's name for its source tensor.
2. ``weights``: each stored tensor equals the documented cast of its source tensor, bit for bit,
   and the output holds exactly the tensors the conversion's parts and patterns keep.
3. ``model-tensors``: the output's tensors, loaded by transformers' own ``from_pretrained`` (its
   renames and fusions), provide every model tensor the source provides, and every stored tensor
   is used by the model (or is a non-persistent buffer, or lies outside the transformers model and
   is given to the probes, as a sentence-transformers Dense layer).
4. ``outputs:<probe>``: each probe (a seeded batch of 8 varied inputs, the plan's or chosen by what
   the model takes) through the original model and through the model built from the output;
   metrics and limits in :mod:`streamconv.tools.validate.report`. A model transformers cannot
   build, or no probe that fits, is a failed ``outputs`` check saying why in one line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv.errors import InvalidOptionError, SourceNotFoundError
from streamconv.format.reader import read_metadata
from streamconv.format.schema import METADATA_FILENAME
from streamconv.plans import get_plan
from streamconv.sources.checkpoint import Checkpoint, open_checkpoint
from streamconv.tools.validate.report import LIMITS, Check, ValidationReport, limits_for
from streamconv.tools.validate.weights import check_weights, source_mismatch

__all__ = ["LIMITS", "Check", "ValidationReport", "locate_source", "record_validation", "validate"]


def validate(
    output: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    *,
    min_cosine: float | None = None,
    max_nmse: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ValidationReport:
    """Compare a converted output with its source checkpoint.

    Args:
        output: A folder written by ``streamconv convert``.
        source: The checkpoint it came from; by default the one metadata.json records (its path,
            or for hub sources its repo id at the recorded commit).
        min_cosine: Overrides the stored dtype's minimum cosine per item.
        max_nmse: Overrides the stored dtype's maximum NMSE.
        seed: Seed of the probes' inputs.
        progress: Show a bar over the steps on stderr (see :mod:`streamconv.progress`).

    Returns:
        The :class:`ValidationReport` (check ``.passed``).

    Raises:
        InvalidOptionError: ``min_cosine`` above 1 or ``max_nmse`` below 0 (no output could pass).
        MissingDependencyError: torch or transformers is not installed.
        SourceNotFoundError: the source cannot be found.
    """
    if min_cosine is not None and not min_cosine <= 1:
        raise InvalidOptionError("{min_cosine=} is above 1, which no cosine reaches; give at most 1",
                                 "min_cosine", min_cosine=min_cosine)
    if max_nmse is not None and not max_nmse >= 0:
        raise InvalidOptionError("{max_nmse=} is below 0, which no error reaches; give at least 0",
                                 "max_nmse", max_nmse=max_nmse)
    started = time.perf_counter()
    output = Path(output)
    metadata = read_metadata(output)
    checkpoint = locate_source(metadata, source)
    plan = get_plan(metadata.get("model_type", "generic"))()
    report = ValidationReport(output_dir=output, source=str(checkpoint.root))
    mismatch = source_mismatch(output, plan, checkpoint, metadata)
    if mismatch is not None:
        report.checks.append(Check("source", False, mismatch))
    else:
        report.checks.extend(check_weights(output, plan, checkpoint, metadata))
        default_cosine, default_nmse = limits_for(str(metadata.get("dtype", "keep")))
        limits = (default_cosine if min_cosine is None else min_cosine, default_nmse if max_nmse is None else max_nmse)
        from streamconv.tools.validate.outputs import check_outputs

        report.checks.extend(check_outputs(output, plan, checkpoint, metadata, report, limits, seed, progress))
    report.seconds = time.perf_counter() - started
    return report


def locate_source(metadata: dict[str, Any], source: str | os.PathLike[str] | None) -> Checkpoint:
    """The source checkpoint, from any working directory.

    ``source`` if given; else the absolute ``path`` metadata.json records when it still exists (for
    hub sources, the cached snapshot of the recorded commit); else, for hub sources, ``repo_id`` at
    the recorded ``revision``; else ``id`` when it exists from here.

    Raises:
        SourceNotFoundError: none of them can be opened.
    """
    if source is not None:
        return open_checkpoint(source)
    recorded = metadata.get("source", {})
    if isinstance(recorded, str):  # format 1
        recorded = {"id": recorded}
    ident, path = recorded.get("id"), recorded.get("path")
    repo_id, revision = recorded.get("repo_id"), recorded.get("revision")
    if path and Path(path).exists():
        return open_checkpoint(path)
    if repo_id:
        return open_checkpoint(repo_id, revision=revision, download=True)  # transformers loads the reference from it
    if ident and Path(ident).expanduser().exists():
        return open_checkpoint(ident)
    raise SourceNotFoundError(str(path or ident), "pass the original checkpoint with --source")


def record_validation(output: str | os.PathLike[str], report: ValidationReport) -> Path:
    """Write ``report`` as the ``validation`` section of the output's metadata.json, atomically
    (:func:`streamconv._files.write_json`).

    Returns:
        The metadata.json path.
    """
    path = Path(output) / METADATA_FILENAME
    metadata = read_metadata(output)
    metadata["validation"] = report.to_dict()
    _files.write_json(metadata, path)
    return path
