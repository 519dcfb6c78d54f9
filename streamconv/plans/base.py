"""What a model plan is: which tensors a model family keeps, what to call them, what else to ship.

A plan is data. Its tensor names go through two rename tables:

1. the checkpoint's :class:`Layout` maps the names one class saves (``model.encoder.*`` for
   ``WhisperForConditionalGeneration``) onto the plan's *canonical* names (``encoder.*``);
2. the plan's ``renames`` map canonical names onto the stored names (``embed_positions`` ->
   ``position_embedding``).

Parts select and require canonical names, so one table of parts serves every layout. The source
name of every tensor is kept beside its stored name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from streamconv.source import Checkpoint, TensorRef
from streamconv.stages import RenameRule, matches_any

__all__ = ["Layout", "ModelInfo", "Part", "Plan", "Selection"]

@dataclass(frozen=True)
class ModelInfo:
    """What detection looks at: the folder, its ``config.json`` and the files beside it.

    Attributes:
        root: The checkpoint folder.
        config: The parsed ``config.json`` (``{}`` when missing or not JSON).
        model_type: ``config["model_type"]`` or ``""``.
        architectures: ``config["architectures"]`` or ``()``.
        files: Names of the files in ``root`` (not recursive).
        config_problem: Why ``config.json`` tells nothing (missing, not JSON, no ``model_type``),
            or ``None`` when it has a ``model_type``.
    """

    root: Path
    config: dict[str, Any]
    model_type: str
    architectures: tuple[str, ...]
    files: frozenset[str]
    config_problem: str | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ModelInfo:
        """Describe ``checkpoint`` for detection.

        Args:
            checkpoint: An opened checkpoint.

        Returns:
            Its config fields and file names.
        """
        config = checkpoint.config or {}
        architectures = config.get("architectures")
        if not isinstance(architectures, list):
            architectures = []
        model_type = str(config.get("model_type") or "")
        return cls(
            root=checkpoint.root,
            config=config,
            model_type=model_type,
            architectures=tuple(a for a in architectures if isinstance(a, str)),
            files=frozenset(p.name for p in checkpoint.root.iterdir()),
            config_problem=checkpoint.config_problem,
        )

    def describe(self) -> str:
        """What the config says, for messages (``config.json has model_type 'bert'...``)."""
        if self.config_problem:
            return self.config_problem
        architectures = f" and architectures {', '.join(self.architectures)}" if self.architectures else ""
        return f"config.json has model_type {self.model_type!r}{architectures}"


@dataclass(frozen=True)
class Layout:
    """One way the classes of a family name their tensors, and the renames onto the plan's names.

    Attributes:
        name: The classes that save this layout (recorded in metadata.json as ``source_layout``).
        markers: Glob patterns over source names; the layout applies when a tensor matches one.
        renames: ``(regex, replacement)`` rules from this layout's names to the canonical names.
    """

    name: str
    markers: tuple[str, ...] = ("*",)
    renames: tuple[RenameRule, ...] = ()


@dataclass(frozen=True)
class Part:
    """A named part of a model (``vision``, ``encoder``...), over canonical names.

    Attributes:
        include: Glob patterns; a tensor matching one belongs to the part.
        required: Glob patterns that must each match at least one tensor of the part.
    """

    include: tuple[str, ...]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """The rules of a plan for the parts asked for, as data for the select/rename stages.

    Attributes:
        include: Glob patterns over canonical names; a tensor matching one is kept.
        exclude: Glob patterns over canonical names; a tensor matching one is dropped.
        required: Glob patterns that must each match at least one kept tensor.
        renames: ``(regex, replacement)`` rules from canonical names to stored names.
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    renames: tuple[RenameRule, ...] = ()


class Plan:
    """A model family. Subclass it in a module of :mod:`streamconv.plans` and register it.

    Class attributes are the plan's data:

    - ``name`` and a one-line ``summary`` of what it keeps;
    - detection: ``model_types`` (values of config.json's ``model_type``), ``architectures``
      (prefixes of class names in ``architectures``, used when ``model_type`` is missing) and
      ``files`` (a file of these names beside the weights claims the checkpoint outright);
    - ``priority``: plans with a lower number are tried first (sentence-transformers before bert);
    - ``layouts``: tried in order, the first with a tensor matching its markers applies, the last
      one otherwise;
    - ``parts``, ``default_parts``, ``exclude`` (for every part) and ``renames`` (canonical to
      stored names).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    model_types: ClassVar[frozenset[str]] = frozenset()
    architectures: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()
    priority: ClassVar[int] = 100
    layouts: ClassVar[tuple[Layout, ...]] = (Layout("as saved"),)
    parts: ClassVar[dict[str, Part]] = {"all": Part(include=("*",))}
    default_parts: ClassVar[tuple[str, ...]] = ("all",)
    exclude: ClassVar[tuple[str, ...]] = ()
    renames: ClassVar[tuple[RenameRule, ...]] = ()

    @classmethod
    def detect(cls, model: ModelInfo) -> bool:
        """True if this plan claims the checkpoint described by ``model``.

        One of the plan's marker ``files`` claims it outright; otherwise ``model_type`` decides, and
        only when config.json has no ``model_type`` do the ``architectures`` prefixes.
        """
        if not model.files.isdisjoint(cls.files):
            return True
        if model.model_type:
            return model.model_type in cls.model_types
        return any(a.startswith(cls.architectures) for a in model.architectures)

    @classmethod
    def detection(cls) -> str:
        """What the plan detects, in words (for ``streamconv types`` and error messages)."""
        clues = []
        if cls.files:
            clues.append(f"a {_or(cls.files)} file")
        if cls.model_types:
            clues.append(f"model_type {_or(sorted(cls.model_types))}")
        if cls.architectures:
            clues.append(f"architectures {_or([a + '*' for a in cls.architectures])} when there is no model_type")
        return ", or ".join(clues) or "nothing: used when no other plan claims the checkpoint"

    def tensors(self, checkpoint: Checkpoint) -> list[TensorRef]:
        """Every tensor the plan may keep, under its source name.

        A plan can add weights from other files here (sentence-transformers Dense modules).
        """
        return checkpoint.tensors

    def layout(self, checkpoint: Checkpoint) -> Layout:
        """The layout of ``checkpoint``: the first whose markers match one of its tensor names."""
        names = [ref.source_name for ref in checkpoint.tensors]
        for layout in self.layouts:
            if any(matches_any(name, layout.markers) for name in names):
                return layout
        return self.layouts[-1]

    def selection(self, parts: Sequence[str] | None = None) -> Selection:
        """The rules for the chosen parts (the plan's default parts if ``None``)."""
        chosen = [self.parts[p] for p in (parts or self.default_parts)]
        return Selection(
            include=tuple(p for part in chosen for p in part.include),
            exclude=self.exclude,
            required=tuple(p for part in chosen for p in part.required),
            renames=self.renames,
        )

    def asset_files(self, checkpoint: Checkpoint) -> list[str]:
        """Files of the plan's own to copy beside the weights, relative to the checkpoint folder.

        The files every plan ships (config, tokenizer, processor) are listed in
        :data:`streamconv.assets.COMMON_ASSETS`; this adds the family's own (sentence-transformers
        module configs).
        """
        return []

    def metadata(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Extra keys for metadata.json (pooling mode for sentence-transformers...)."""
        return {}


def _or(words: Sequence[str]) -> str:
    return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"
