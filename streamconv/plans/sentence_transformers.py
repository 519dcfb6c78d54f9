"""sentence-transformers models: the Transformer's weights, Dense modules, and how to pool.

A sentence-transformers folder is a Hugging Face checkpoint (the Transformer module, at the root)
plus the modules listed in ``modules.json``: Pooling, Dense, Normalize... Each Dense module keeps
its weights in its own folder (``2_Dense/model.safetensors``, or ``pytorch_model.bin`` from older
releases, holding ``linear.weight`` and ``linear.bias``); they are stored under the module's path
as a prefix, ``2_Dense.linear.weight``, which is also their source name. Pooling mode, normalisation, maximum sequence length and
similarity function go into metadata.json under ``sentence_transformers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv.errors import PlanError
from streamconv.plans.base import Plan
from streamconv.plans.probes import Probe, ProbeContext, near_duplicates, output_tensor, sentences, text_batch
from streamconv.sources.checkpoint import Checkpoint, read_safetensors_header
from streamconv.sources.ref import TensorRef

__all__ = ["Module", "SentenceTransformersPlan", "read_modules"]

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MODULE_CONFIG_FILE = "config.json"
MODULE_WEIGHTS_FILE = "model.safetensors"
MODULE_BIN_FILE = "pytorch_model.bin"
#: Pooling config keys of sentence-transformers before 5.0, in its concatenation order.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: What sentence-transformers uses when the files say nothing.
DEFAULT_POOLING_MODE = "mean"
DEFAULT_SIMILARITY = "cosine"


@dataclass(frozen=True)
class Module:
    """One entry of ``modules.json``.

    Attributes:
        index: Position in ``modules.json``, from 0.
        kind: The class name without its package (``Transformer``, ``Pooling``, ``Dense``...).
        path: The module's folder, relative to the model folder (``""`` for the root).
    """

    index: int
    kind: str
    path: str

    @property
    def prefix(self) -> str:
        """The prefix of this module's tensor names in the output (``2_Dense.``)."""
        return f"{self.path}."


def read_modules(root: Path) -> list[Module]:
    """The modules listed in ``root/modules.json``, in order (none if it is missing or not JSON).

    Raises:
        PlanError: a module's path leaves the model folder (absolute, or with ``..``).
    """
    modules = [
        Module(index, str(entry.get("type", "")).rsplit(".", 1)[-1], str(entry.get("path", "")))
        for index, entry in enumerate(_read_json(root, MODULES_FILE, default=[]))
        if isinstance(entry, dict)
    ]
    for module in modules:
        if module.path:  # "" is the Transformer module at the top of the folder
            _files.contained(root, module.path, named_in=root / MODULES_FILE)
    return modules


class SentenceTransformersPlan(Plan):
    """A sentence-transformers model: its Transformer, Dense modules and pooling settings."""

    name = "sentence-transformers"
    aliases = ("sentence_transformer", "sentence_transformers")
    summary = (
        "sentence-transformers models: the Transformer's tensors, names unchanged, plus each Dense "
        "module's as <path>.<name>; pooling, normalize, max_seq_length, similarity in metadata"
    )
    expected_assets = ("tokenizer.json",)
    files = (MODULES_FILE, ST_CONFIG_FILE)

    def tensors(self, checkpoint: Checkpoint) -> list[TensorRef]:
        """The Transformer's tensors, then each Dense module's under its prefix.

        Raises:
            PlanError: a Dense module folder holds neither ``model.safetensors`` nor
                ``pytorch_model.bin``.
        """
        refs = list(checkpoint.tensors)
        for module in self._modules(checkpoint):
            if module.kind == "Dense":
                refs.extend(_dense_tensors(checkpoint.root, module))
        return refs

    def asset_files(self, checkpoint: Checkpoint) -> list[str]:
        """The module list, the sentence-transformers configs, and each module folder's config."""
        modules = self._modules(checkpoint)
        module_configs = [_inside(m.path, MODULE_CONFIG_FILE) for m in modules if m.path]
        return [*super().asset_files(checkpoint), MODULES_FILE, SBERT_CONFIG_FILE, ST_CONFIG_FILE, *module_configs]

    def _modules(self, checkpoint: Checkpoint) -> list[Module]:
        """The checkpoint's modules, parsed from modules.json once per plan and checkpoint: tensors,
        assets and metadata all ask for them during one conversion."""
        cached = self.__dict__.get("_parsed_modules")
        if cached is None or cached[0] is not checkpoint:
            cached = (checkpoint, read_modules(checkpoint.root))
            self.__dict__["_parsed_modules"] = cached
        return cached[1]

    def probes(self, context: ProbeContext) -> list[Probe]:
        """The pooled, normalised embedding of 8 sentences (see :func:`_probes`)."""
        return _probes(context)

    def metadata(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """``{"sentence_transformers": {pooling_mode, normalize, max_seq_length, ...}}``."""
        root = checkpoint.root
        modules = self._modules(checkpoint)
        st_config = _read_json(root, ST_CONFIG_FILE, default={})
        return {
            "sentence_transformers": {
                "pooling_mode": _pooling_mode(root, modules),
                "normalize": any(m.kind == "Normalize" for m in modules),
                "max_seq_length": _max_seq_length(checkpoint),
                "similarity_function": st_config.get("similarity_fn_name") or DEFAULT_SIMILARITY,
                "modules": [_module_record(m) for m in modules],
            }
        }


    def describe(self, metadata: dict[str, Any]) -> list[str]:
        """Pooling, normalisation, sequence length and similarity, as recorded at conversion."""
        st = metadata.get("sentence_transformers")
        if not isinstance(st, dict):
            return []
        return [
            f"sentence-transformers: pooling {st.get('pooling_mode')}, normalize {st.get('normalize')}, "
            f"max_seq_length {st.get('max_seq_length')}, similarity {st.get('similarity_function')}"
        ]

    def module_folders(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Each Dense module's tensor prefix and folder (``2_Dense.`` -> ``2_Dense``), the folder as
        recorded: metadata.json is input, and export checks every folder before it writes."""
        settings = metadata.get("sentence_transformers")
        modules = settings.get("modules") if isinstance(settings, dict) else []
        modules = modules if isinstance(modules, list) else []
        return {m["tensor_prefix"]: m.get("path") for m in modules
                if isinstance(m, dict) and isinstance(m.get("tensor_prefix"), str) and m["tensor_prefix"]}


def _module_record(module: Module) -> dict[str, Any]:
    record: dict[str, Any] = {"index": module.index, "type": module.kind, "path": module.path}
    if module.kind == "Dense":
        record["tensor_prefix"] = module.prefix
    return record


def _dense_tensors(root: Path, module: Module) -> list[TensorRef]:
    """The Dense module's ``model.safetensors``, else its ``pytorch_model.bin`` (older releases)."""
    folder = _files.within(root, root / module.path)
    weights = folder / MODULE_WEIGHTS_FILE
    if weights.exists():
        return read_safetensors_header(_files.within(root, weights), prefix=module.prefix)
    if (folder / MODULE_BIN_FILE).exists():
        from streamconv.sources.torch_bin import read_bin_file  # here: only .bin modules may need torch

        return read_bin_file(_files.within(root, folder / MODULE_BIN_FILE), prefix=module.prefix)
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise PlanError(
        f"{folder}: the Dense module has no {MODULE_WEIGHTS_FILE} or {MODULE_BIN_FILE} "
        f"(found {', '.join(found) or 'nothing'}); re-save the model with sentence-transformers"
    )


def _pooling_mode(root: Path, modules: list[Module]) -> str | list[str] | None:
    """``mean``, ``cls``... as sentence-transformers reads it; a list when several are combined."""
    pooling = next((m for m in modules if m.kind == "Pooling"), None)
    if pooling is None:
        return None
    config = _read_json(root, _inside(pooling.path, MODULE_CONFIG_FILE), default={})
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
    else:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
        modes = modes or [DEFAULT_POOLING_MODE]
    return modes[0] if isinstance(modes, list) and len(modes) == 1 else modes


def _max_seq_length(checkpoint: Checkpoint) -> int | None:
    """From sentence_bert_config.json; else, as sentence-transformers 5 does, the tokenizer's limit."""
    root = checkpoint.root
    declared = _read_json(root, SBERT_CONFIG_FILE, default={}).get("max_seq_length")
    if isinstance(declared, int):
        return declared
    limits = [
        _read_json(root, TOKENIZER_CONFIG_FILE, default={}).get("model_max_length"),
        (checkpoint.config or {}).get("max_position_embeddings"),
    ]
    return min((v for v in limits if isinstance(v, int)), default=None)


class _NotJSON(PlanError):
    pass


def _read_json(root: Path, relative: str, default: Any) -> Any:
    """The file's JSON, or ``default`` when it is missing or not JSON (the asset copy warns).

    Raises:
        UnsafeInputError: the file is not a regular file, leads outside the model folder, or is over
            the JSON cap (see :mod:`streamconv._files`).
    """
    try:
        data = _files.read_json(root / relative, root=root, error=_NotJSON)
    except (FileNotFoundError, NotADirectoryError, _NotJSON):
        return default
    return data if isinstance(data, type(default)) else default


#: sentence-transformers' Pooling concatenates its modes in this order.
POOLING_ORDER = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


#: The probe's sequence length when the folder records none (sentence-transformers' own default).
DEFAULT_MAX_SEQ_LENGTH = 128
#: Words the long probe sentence has beyond the sequence length, so that it is truncated.
BEYOND_LENGTH = 8


def _probes(context: ProbeContext) -> list[Probe]:
    """The sentence embedding, computed module by module as modules.json lists them.

    The 8 usual sentences and one longer than ``max_seq_length`` (in a batch of its own, so the
    others are not padded to its length) are tokenised and truncated at the folder's
    ``max_seq_length``; then Pooling (modes from metadata.json), each Dense layer (its
    ``config.json``, the weights in :attr:`ProbeContext.extras`: the source's or the output's) and
    Normalize apply in their listed order. When the sentence-transformers package is installed,
    the same sentences through its own ``SentenceTransformer(source).encode`` check this computation.
    A second probe, ``neighbours``, embeds :func:`~streamconv.plans.probes.near_duplicates` (64
    texts) the same way, and validation checks that each keeps its 10 nearest neighbours.
    """
    torch, extras = context.torch, context.extras
    settings = context.metadata.get("sentence_transformers") or {}
    config = context.model.config
    positions = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LENGTH + 2
    length = min(settings.get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH, positions - 2)
    texts = sentences(context.seed)
    long_text = sentences(context.seed, count=2, longest=length + BEYOND_LENGTH)[-1]
    pad = getattr(config, "pad_token_id", None) or 0
    batches = [text_batch(context, config.vocab_size, length, pad_id=pad, texts=t) for t in (texts, [long_text])]
    steps = _steps(torch, settings, read_modules(context.output), context.output)

    def run(model: Any) -> Any:
        embeddings = []
        for batch in batches:
            embedding = output_tensor(model(**batch))
            for step in steps:
                embedding = step(embedding, batch["attention_mask"], extras)
            embeddings.append(embedding)
        return torch.cat(embeddings)

    expected = None
    source = context.source
    if source is not None and _has_sentence_transformers():

        def expected() -> Any:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(source), device="cpu")
            return torch.from_numpy(model.encode([*texts, long_text], batch_size=len(texts) + 1, convert_to_numpy=True))

    corpus = text_batch(context, config.vocab_size, length, pad_id=pad, texts=near_duplicates(context.seed))

    def neighbours(model: Any) -> Any:
        embedding = output_tensor(model(**corpus))
        for step in steps:
            embedding = step(embedding, corpus["attention_mask"], extras)
        return embedding

    return [Probe("embedding", run, expected=expected), Probe("neighbours", neighbours, ranking=True)]


Step = Callable[[Any, Any, dict[str, Any]], Any]


def _steps(torch: Any, settings: dict[str, Any], modules: list[Module], folder: Path) -> list[Step]:
    """One function per module after the Transformer, in modules.json's order.

    Raises:
        PlanError: a module the probe cannot compute, or Dense/Normalize before Pooling.
    """
    modes = settings.get("pooling_mode") or DEFAULT_POOLING_MODE
    modes = sorted([modes] if isinstance(modes, str) else modes, key=POOLING_ORDER.index)
    steps: list[Step] = []
    pooled = False
    for module in modules:
        if module.kind == "Transformer":
            continue
        if module.kind == "Pooling":
            steps.append(lambda x, mask, extras: torch.cat([_pool(torch, m, x, mask) for m in modes], dim=1))
            pooled = True
        elif module.kind in ("Dense", "Normalize") and not pooled:
            raise PlanError(f"{folder / MODULES_FILE}: {module.kind} comes before Pooling; the probe cannot compute it")
        elif module.kind == "Dense":
            steps.append(_dense_step(torch, module, _read_json(folder, _inside(module.path, MODULE_CONFIG_FILE), default={})))
        elif module.kind == "Normalize":
            steps.append(lambda x, mask, extras: torch.nn.functional.normalize(x, p=2, dim=1))
        else:
            raise PlanError(f"{folder / MODULES_FILE}: module {module.kind!r} is not one the probe can compute "
                            "(Transformer, Pooling, Dense, Normalize)")
    if not pooled:
        steps.insert(0, lambda x, mask, extras: torch.cat([_pool(torch, m, x, mask) for m in modes], dim=1))
    return steps


def _dense_step(torch: Any, module: Module, config: dict[str, Any]) -> Step:
    activation = _activation(torch, config.get("activation_function"))

    def step(x: Any, mask: Any, extras: dict[str, Any]) -> Any:
        weight = extras[f"{module.prefix}linear.weight"]
        bias = extras.get(f"{module.prefix}linear.bias") if config.get("bias", True) else None
        return activation(torch.nn.functional.linear(x, weight, bias))

    return step


def _pool(torch: Any, mode: str, tokens: Any, mask: Any) -> Any:
    """One pooling mode of sentence-transformers' Pooling module."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    counts = weights.sum(dim=1).clamp_min(1e-9)
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return tokens.masked_fill(weights == 0, -1e9).max(dim=1).values
    if mode == "mean":
        return (tokens * weights).sum(dim=1) / counts
    if mode == "mean_sqrt_len_tokens":
        return (tokens * weights).sum(dim=1) / counts.sqrt()
    if mode == "weightedmean":
        positions = torch.arange(1, tokens.shape[1] + 1, dtype=tokens.dtype).view(1, -1, 1) * weights
        return (tokens * positions).sum(dim=1) / positions.sum(dim=1).clamp_min(1e-9)
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return tokens[torch.arange(tokens.shape[0]), last]
    raise PlanError(f"pooling mode {mode!r} is not one sentence-transformers has; the probe cannot pool it")


def _activation(torch: Any, name: Any) -> Any:
    """A Dense module's activation from its dotted class name (only ``torch.nn`` classes)."""
    cls = str(name or "torch.nn.Identity").rsplit(".", 1)[-1]
    found = getattr(torch.nn, cls, None)
    if found is None:
        raise PlanError(f"Dense activation {name!r} is not a torch.nn class; the probe cannot apply it")
    return found()


def _has_sentence_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def _inside(module_path: str, name: str) -> str:
    """``name`` inside a module folder, relative to the model folder (``""`` is the folder itself)."""
    return f"{module_path}/{name}" if module_path else name
