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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from streamconv.dtypes import CODES, by_code
from streamconv.errors import InvalidOptionError, PlanError, UnsupportedDtypeError
from streamconv.plans.model_inputs import input_probes
from streamconv.plans.probes import Probe, ProbeContext
from streamconv.sources.checkpoint import Checkpoint
from streamconv.sources.ref import TensorRef
from streamconv.stages.names import RenameRule, matches_any, rename, select

__all__ = ["Layout", "ModelInfo", "Part", "Plan", "Probe", "ProbeContext", "Resolution"]

#: Copied beside the weights for every plan, when the checkpoint has them.
COMMON_ASSETS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


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
class Resolution:
    """What a plan keeps of a checkpoint: the tensors to write, checked before any data is read.

    Attributes:
        refs: The tensors, under their stored names (each keeps its ``source_name``).
        parts: The parts converted (the plan's defaults when none were asked for).
        layout: The checkpoint's layout within the family.
        candidates: Every tensor the plan could have kept, under its source name.
        warnings: Patterns that matched nothing, for the user.
    """

    refs: tuple[TensorRef, ...]
    parts: tuple[str, ...]
    layout: Layout
    candidates: tuple[TensorRef, ...]
    warnings: tuple[str, ...] = ()


class Plan:
    """A model family. Subclass it in a module of :mod:`streamconv.plans` and list it in ``PLANS``.

    Class attributes are the plan's data:

    - ``name``, old spellings in ``aliases``, and a one-line ``summary`` of what it keeps;
    - detection: ``model_types`` (values of config.json's ``model_type``), ``architectures``
      (prefixes of class names in ``architectures``, used when ``model_type`` is missing) and
      ``files`` (a file of these names beside the weights claims the checkpoint outright);
    - ``layouts``: tried in order, the first with a tensor matching its markers applies, the last
      one otherwise;
    - ``parts``, ``default_parts``, ``exclude`` (for every part) and ``renames`` (canonical to
      stored names);
    - ``expected_assets``: files the family's users need (a tokenizer, a processor config); a
      checkpoint without one converts with a warning naming it, or fails with ``strict``.

    Methods a family may override: :meth:`tensors` (weights from other files), :meth:`asset_files`,
    :meth:`metadata`, :meth:`model_class` and :meth:`probes` (what validation builds and feeds).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    model_types: ClassVar[frozenset[str]] = frozenset()
    architectures: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()
    layouts: ClassVar[tuple[Layout, ...]] = (Layout("as saved"),)
    parts: ClassVar[dict[str, Part]] = {"all": Part(include=("*",))}
    default_parts: ClassVar[tuple[str, ...]] = ("all",)
    exclude: ClassVar[tuple[str, ...]] = ()
    renames: ClassVar[tuple[RenameRule, ...]] = ()
    expected_assets: ClassVar[tuple[str, ...]] = ()

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

    @classmethod
    def chosen_parts(cls, parts: Sequence[str] | None) -> tuple[str, ...]:
        """``parts``, or the plan's defaults when none were asked for."""
        return tuple(parts) if parts else cls.default_parts

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

    def stored_name(self, layout: Layout, source_name: str) -> str:
        """The name a tensor of ``layout`` called ``source_name`` is stored under."""
        name = source_name
        for pattern, replacement in (*layout.renames, *self.renames):
            name = re.sub(pattern, replacement, name)
        return name

    def resolve(
        self,
        checkpoint: Checkpoint,
        parts: Sequence[str] | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> Resolution:
        """The tensors a conversion writes, renamed, with every check done before any data is read.

        The plan's tensors are renamed by the checkpoint's layout onto canonical names, selected by
        the parts' patterns, checked against the parts' required patterns, filtered by the user's
        ``include``/``exclude`` (over source names), then renamed by the plan's table.

        Args:
            checkpoint: The opened checkpoint.
            parts: Plan parts (the plan's defaults if ``None``).
            include: Glob patterns over source names; keep only tensors matching one.
            exclude: Glob patterns over source names; drop tensors matching one.

        Returns:
            The :class:`Resolution`.

        Raises:
            PlanError: tensors the plan requires are missing, a rename collision, or nothing left.
            UnsupportedDtypeError: a kept tensor has a dtype streamconv cannot store.
        """
        chosen = self.chosen_parts(parts)
        layout = self.layout(checkpoint)
        candidates = self.tensors(checkpoint)
        canonical = list(rename(candidates, layout.renames))
        kept = list(select(canonical, include=self._included(chosen), exclude=self.exclude))
        self._check_required(checkpoint, chosen, canonical, kept)
        warnings = tuple(_unmatched(include, exclude, kept, candidates))
        wanted = {r.source_name for r in select(candidates, include=include, exclude=exclude)}
        kept = [r for r in kept if r.source_name in wanted]
        if not kept and (include or exclude):  # an option that cannot work: exit 2
            raise InvalidOptionError(
                "no tensor left to convert after {include}/{exclude}; loosen the patterns "
                "(they match the source checkpoint's tensor names)", "include", where=checkpoint.root,
            )
        if not kept:
            raise PlanError(f"{checkpoint.root}: the {self.name} plan keeps no tensor of this checkpoint; "
                            "choose another plan with --type")
        refs = tuple(rename(kept, self.renames))
        unsupported = [r for r in refs if by_code(r.dtype_code) is None]
        if unsupported:
            raise UnsupportedDtypeError(
                unsupported[0].path, {r.source_name: r.dtype_code for r in unsupported}, list(CODES)
            )
        return Resolution(refs, chosen, layout, tuple(candidates), warnings)

    def _included(self, parts: Sequence[str]) -> tuple[str, ...]:
        return tuple(p for part in parts for p in self.parts[part].include)

    def _check_required(
        self, checkpoint: Checkpoint, parts: Sequence[str], canonical: list[TensorRef], kept: list[TensorRef]
    ) -> None:
        required = [p for part in parts for p in self.parts[part].required]
        missing = [p for p in required if not any(matches_any(r.name, [p]) for r in kept)]
        if missing:
            raise PlanError(
                f"{checkpoint.root}: this checkpoint lacks tensors the {self.name!r} plan needs for parts "
                f"{','.join(parts)}: none matches {', '.join(missing)} "
                f"(it has {_name_groups(canonical)}); "
                f"choose other --parts ({', '.join(self.parts)}) or another --type"
            )

    def asset_files(self, checkpoint: Checkpoint) -> list[str]:
        """Files to copy beside the weights, relative to the checkpoint folder (missing ones skipped)."""
        return list(COMMON_ASSETS)

    def metadata(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Extra keys for metadata.json (pooling mode for sentence-transformers...)."""
        return {}

    def describe(self, metadata: dict[str, Any]) -> list[str]:
        """Lines about the family's own metadata for ``streamconv inspect`` (pooling...)."""
        return []

    def module_folders(self, metadata: dict[str, Any]) -> dict[Any, Any]:
        """Stored-name prefixes whose tensors belong in a module folder of their own (prefix -> folder).

        Both come from ``metadata.json`` as recorded: export checks them before using them
        (:func:`streamconv.tools.export_checks.check_module_folders`).

        :func:`streamconv.export` writes those tensors to ``<folder>/model.safetensors`` without the
        prefix, as the family's loader expects.
        """
        return {}

    def model_class(self, metadata: dict[str, Any]) -> str:
        """The transformers class validation builds: the checkpoint's architecture, else AutoModel."""
        # Format 1 kept architectures at the top level; format 2 keeps them with the source.
        architectures = metadata.get("source", {}).get("architectures") or metadata.get("architectures") or []
        return architectures[0] if architectures else "AutoModel"

    def probes(self, context: ProbeContext) -> list[Probe]:
        """Inputs that exercise the converted model; by default chosen by what the model takes
        (:func:`streamconv.plans.model_inputs.input_probes`: token ids, pixel values, log-mel
        features or raw audio, sized from its config)."""
        return input_probes(context)[0]


def _unmatched(
    include: Sequence[str], exclude: Sequence[str], kept: list[TensorRef], candidates: list[TensorRef]
) -> list[str]:
    warnings = []
    for pattern in [*include, *exclude]:
        if not any(matches_any(r.source_name, [pattern]) for r in kept):
            anywhere = any(matches_any(r.source_name, [pattern]) for r in candidates)
            where = "only tensors outside the converted parts" if anywhere else "no tensor"
            warnings.append(f"pattern {pattern!r} matched {where}")
    return warnings


def _name_groups(refs: list[TensorRef], limit: int = 12) -> str:
    """The tensors' top-level names, ``text_model.*, logit_scale``, for error messages."""
    groups = list(dict.fromkeys(r.name.split(".")[0] + (".*" if "." in r.name else "") for r in refs))
    shown = ", ".join(groups[:limit])
    return f"{shown} and {len(groups) - limit} more" if len(groups) > limit else shown or "no tensors"


def _or(words: Sequence[str]) -> str:
    return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"
