"""What a model plan is: which tensors a model family keeps, what to call them, what else to ship."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from streamconv.source import Checkpoint, TensorRef
from streamconv.stages import RenameRule

__all__ = ["ModelInfo", "Part", "Plan", "Selection"]


@dataclass(frozen=True)
class ModelInfo:
    """What detection looks at: the folder, its ``config.json`` and the files beside it.

    Attributes:
        root: The checkpoint folder.
        config: The parsed ``config.json`` (``{}`` when missing or not JSON).
        model_type: ``config["model_type"]`` or ``""``.
        architectures: ``config["architectures"]`` or ``()``.
        files: Names of the files in ``root`` (not recursive).
    """

    root: Path
    config: dict[str, Any]
    model_type: str
    architectures: tuple[str, ...]
    files: frozenset[str]

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ModelInfo:
        config = checkpoint.config or {}
        architectures = config.get("architectures") or ()
        return cls(
            root=checkpoint.root,
            config=config,
            model_type=str(config.get("model_type") or ""),
            architectures=tuple(str(a) for a in architectures if isinstance(a, str)),
            files=frozenset(p.name for p in checkpoint.root.iterdir()),
        )


@dataclass(frozen=True)
class Selection:
    """The tensor rules of a plan for the parts asked for, as data for the select/rename stages.

    Attributes:
        include: Glob patterns over source names; a tensor matching one is kept.
        exclude: Glob patterns over source names; a tensor matching one is dropped.
        required: Glob patterns that must each match at least one kept tensor.
        renames: ``(regex, replacement)`` rules applied in order to the kept names.
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    renames: tuple[RenameRule, ...] = ()


@dataclass(frozen=True)
class Part:
    """A named part of a model (``vision``, ``encoder``...): its tensors and their names."""

    include: tuple[str, ...]
    required: tuple[str, ...] = ()
    renames: tuple[RenameRule, ...] = ()


class Plan:
    """A model family. Subclass it in a module of :mod:`streamconv.plans` and register it.

    Class attributes are the plan's data: ``name``, a one-line ``summary`` of what it detects and
    keeps, its ``parts`` and ``default_parts``, and ``exclude`` patterns for every part.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    parts: ClassVar[dict[str, Part]] = {"all": Part(include=("*",))}
    default_parts: ClassVar[tuple[str, ...]] = ("all",)
    exclude: ClassVar[tuple[str, ...]] = ()
    #: Plans tried earlier in detection claim a checkpoint first (sentence-transformers before bert).
    priority: ClassVar[int] = 100

    @classmethod
    def detect(cls, model: ModelInfo) -> bool:
        """True if this plan should convert the checkpoint described by ``model``."""
        return False

    def tensors(self, checkpoint: Checkpoint) -> list[TensorRef]:
        """Every tensor the plan may keep; a plan can add weights from other files here."""
        return checkpoint.tensors

    def selection(self, parts: Sequence[str] | None = None) -> Selection:
        """The rules for the chosen parts (the plan's default parts if ``None``)."""
        chosen = [self.parts[p] for p in (parts or self.default_parts)]
        return Selection(
            include=tuple(p for part in chosen for p in part.include),
            exclude=self.exclude,
            required=tuple(p for part in chosen for p in part.required),
            renames=tuple(r for part in chosen for r in part.renames),
        )

    def metadata(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Extra keys for metadata.json (pooling mode for sentence-transformers...)."""
        return {}

