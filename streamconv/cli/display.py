"""Every text the CLI prints: summaries and reports of each command, sizes, names made safe.

The one owner of terminal text. The library returns data (:class:`ConversionResult`,
:class:`VerifyReport`, :class:`ValidationReport`, :class:`ExportResult`); this module lays it out.
Text that is recorded in a file or carried by an error (a check's ``detail``, a warning, an
error's message) is the library's, because a Python caller reads it too; it is shown here through
:func:`printable`, as is every name read from a file. Sizes are binary units, labelled
(:func:`streamconv.units.format_bytes`), as on the progress bars.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from streamconv.units import format_bytes

__all__ = [
    "MAX_NAME_WIDTH", "codec_label", "conversion_summary", "export_summary", "inspect_order", "inspect_text",
    "printable", "size", "types_text", "validation_table", "verify_summary",
]

#: Longest tensor name shown in a table; longer ones are cut in the middle (``--json`` keeps them).
MAX_NAME_WIDTH = 96
#: Longest warning or problem line shown.
MAX_LINE_WIDTH = 400

size = format_bytes


def printable(text: str, limit: int = MAX_NAME_WIDTH) -> str:
    """``text`` safe for a terminal table: control characters escaped, long text cut in the middle."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(safe) <= limit:
        return safe
    keep = (limit - 3) // 2
    return f"{safe[:keep]}...{safe[-keep:]}"


def _warnings(warnings: Iterable[Any], indent: str = "  ") -> list[str]:
    return [f"{indent}warning: {printable(str(w), MAX_LINE_WIDTH)}" for w in warnings]


def codec_label(compression: Any, level: Any) -> str:
    if isinstance(compression, dict):  # format 1: {"codec": ..., "level": ...}
        compression, level = compression.get("codec"), compression.get("level")
    if compression != "zstd":
        return "none"
    return "zstd, tuned per plane" if level is None else f"zstd-{level}"


def conversion_summary(result: Any, requested: str) -> str:
    """What ``convert`` wrote (or, in a dry run, would write)."""
    lines = []
    if result.dry_run:
        lines.append(f"dry run: {printable(str(result.source))} -> {result.output_dir} would hold:")
        names = [printable(t["name"]) for t in result.tensors]
        width = max(map(len, names), default=0)
        for name, t in zip(names, result.tensors, strict=True):
            shape = "x".join(map(str, t["shape"])) or "scalar"
            lines.append(
                f"  {name:<{width}}  {shape:>16}  {t['source_dtype']:>8} -> {t['dtype']:<8}  {size(t['bytes']):>10}"
            )
    else:
        lines.append(f"converted {printable(str(result.source))} -> {result.output_dir}")
    how = "detected" if result.detected else "no plan recognised the checkpoint"
    if requested != "auto":
        how = f"--type {requested}"
    lines.append(f"  model type {result.model_type} ({how}), parts {','.join(result.parts)}")
    lines.append(
        f"  {result.tensor_count} tensors, {result.parameter_count:,} parameters, "
        f"{result.chunk_count} chunks, {result.dtype}, {codec_label(result.compression, result.level)}"
    )
    verb = "estimated" if result.dry_run else "written"
    lines.append(
        f"  {size(result.source_bytes)} -> {size(result.output_bytes)} {verb} "
        f"({result.ratio:.2f}x) in {result.seconds:.2f} s"
    )
    if result.hub is not None:
        lines.append(hub_line(result.hub, result.source_bytes))
    if result.dry_run:
        lines.extend(
            f"  asset {printable(a['path'])}"
            + (f" (built from {', '.join(a['built_from'])})" if "built_from" in a else "")
            for a in result.assets
        )
    lines.extend(_quantization(result.quantization))
    lines.extend(_warnings(result.warnings))
    return "\n".join(lines)


def _quantization(section: Any) -> list[str]:
    """An int8 output's quantization, in a line, and each weight matrix kept in float16."""
    if not isinstance(section, dict):
        return []
    kept = [k for k in section.get("kept_float16") or [] if isinstance(k, dict)]
    lines = [f"  int8: {section.get('quantized')} weight matrices as int8 codes, a float16 scale per "
             f"{section.get('block')} elements of a row; {len(kept)} kept in float16"]
    lines.extend(f"    kept in float16: {printable(str(k.get('name')))} ({printable(str(k.get('reason')))})"
                 for k in kept)
    return lines


def hub_line(hub: dict[str, Any], kept: int) -> str:
    """How a hub source was read: by ranges (bytes fetched, files checked by sha256) or from the cache."""
    at = f"  hub commit {printable(str(hub['commit']))[:12]}"
    if hub["mode"] == "shards":
        checked = ", ".join(printable(str(n)) for n in hub["sha256_checked"]) or "none"
        return (f"{at}: .bin weights: {hub['shards_fetched']} shard fetches, one shard at a time into a temporary "
                f"folder, converted, then deleted ({size(hub['bytes_fetched'])} fetched); sha256 checked: {checked}")
    if hub["mode"] != "ranges":
        how = {"cache": "weights read from the local cache", "download": "snapshot downloaded into the cache",
               "offline": "read from the local cache (offline)"}.get(hub["mode"], str(hub["mode"]))
        return f"{at}: {how}"
    checked = ", ".join(printable(str(n)) for n in hub["sha256_checked"]) or "none (not every byte was read)"
    return (f"{at}: {size(hub['bytes_fetched'])} fetched by range reads for {size(kept)} of kept tensors, "
            f"nothing of the weights written to disk; sha256 checked: {checked}")


def validation_table(report: dict[str, Any], debug: bool) -> str:
    """A validation report (``ValidationReport.to_dict()``): one line per check, then the verdict."""
    lines = [f"validated {report['output_dir']} against {printable(str(report['source']))}"]
    for check in report["checks"]:
        lines.append(f"  {'ok  ' if check['passed'] else 'FAIL'} {check['name']}: "
                     f"{printable(str(check['detail']), MAX_LINE_WIDTH * 4)}")
    lines.append(f"  {'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s")
    messages = report.get("messages") or []
    if debug:  # all of it, line by line: --debug is asked for to read what the library said
        lines.extend(f"  transformers: {printable(line, len(line))}" for m in messages for line in str(m).splitlines())
    elif messages:
        lines.append(f"  transformers said {len(messages)} thing{'s' if len(messages) != 1 else ''}; rerun with --debug")
    return "\n".join(lines)


def verify_summary(report: Any, limit: int = 20) -> str:
    """A :class:`VerifyReport`: one line of totals, then the damaged tensors, problems and what was not checked."""
    verdict = "ok" if report.passed else "DAMAGED"
    lines = [f"{report.output}: {verdict}: {report.tensor_count} tensors, {report.chunk_count} chunks, "
             f"{size(report.checked_bytes)} of chunk data, {len(report.files)} files hashed "
             f"in {report.seconds:.2f} s"]
    damaged = sorted((printable(name), found) for name, found in report.damaged.items())
    if damaged:
        width = max(len(name) for name, _ in damaged[:limit])
        lines.append(f"  {'damaged tensor':<{width}}  chunks  first problem")
        for name, found in damaged[:limit]:
            lines.append(f"  {name:<{width}}  {len(found):>6}  {printable(found[0], MAX_LINE_WIDTH)}")
        if len(damaged) > limit:
            lines.append(f"  ... and {len(damaged) - limit} more damaged tensors (--json lists them all)")
    lines.extend(f"  problem: {printable(p, MAX_LINE_WIDTH)}" for p in report.problems)
    lines.extend(f"  not checked: {printable(u, MAX_LINE_WIDTH)}" for u in report.unchecked)
    return "\n".join(lines)


def export_summary(result: Any) -> str:
    """What ``export`` wrote (an :class:`ExportResult`)."""
    total = sum(f["bytes"] for f in result.files)
    lines = [
        f"exported {result.output} -> {result.target}",
        f"  {result.tensor_count} tensors, {len(result.files)} files, {size(total)}, dtype {result.dtype}, "
        f"in {result.seconds:.2f} s",
    ]
    return "\n".join(lines + _warnings(result.warnings))


def natural_key(name: str) -> list[Any]:
    """``layer.2`` before ``layer.10``: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def inspect_order(tensors: Sequence[Any], source_names: bool) -> list[Any]:
    """The tensors in the order ``inspect`` lists them, text and ``--json`` alike: natural order of
    the names shown (source names with ``--source-names``)."""
    return sorted(tensors, key=lambda t: natural_key(t.source_name if source_names else t.name))


def inspect_text(weights: Any, metadata: dict[str, Any] | None, tensors: Sequence[Any], source_names: bool,
                 plan_lines: Iterable[str], stored: tuple[int, str]) -> str:
    """``inspect``'s report: the header, assets and warnings, then one line per tensor (in ``tensors``' order).

    ``metadata`` is None for a weights file without ``metadata.json``; ``stored`` is the weights'
    format version and codec, as the file says.
    """
    if metadata is None:
        lines = [f"{weights}",
                 f"  format {stored[0]}, compression {stored[1]}; no metadata.json beside it (a weights file "
                 "written without `streamconv convert`): its source, model type and assets are not known",
                 f"  {len(tensors)} tensors, {sum(t.numel for t in tensors):,} parameters"]
        return "\n".join(lines + _tensor_table(tensors, source_names))
    source: dict[str, Any] = metadata["source"] if isinstance(metadata.get("source"), dict) else {}
    lines = [f"{weights}",
             f"  source {printable(str(source.get('id', '?')))}"
             + (f" @ {printable(str(source['revision']))}" if source.get("revision") else ""),
             f"  format {metadata.get('format_version')}, model type {metadata.get('model_type')}, "
             f"parts {','.join(metadata.get('parts') or []) or '-'}, dtype {metadata.get('dtype')}, "
             f"compression {codec_label(metadata.get('compression'), metadata.get('level'))}"]
    lines.extend(f"  {line}" for line in plan_lines)
    files = metadata.get("files") or []
    lines.append(
        f"  {len(tensors)} tensors, {metadata.get('parameter_count', 0):,} parameters, "
        f"{size(metadata.get('source_bytes', 0))} -> {size(metadata.get('output_bytes', 0))} "
        f"({metadata.get('ratio', 0):.2f}x)" + (f" in {len(files)} files" if len(files) > 1 else "")
    )
    lines.extend(_quantization(metadata.get("quantization")))
    lines.extend(_warnings(metadata.get("warnings", [])))
    for asset in metadata.get("assets", []):
        lines.append(f"  asset {printable(str(asset.get('path')))} ({size(asset.get('bytes', 0))}, "
                     f"sha256 {str(asset.get('sha256'))[:12]}...)")
    return "\n".join(lines + _tensor_table(tensors, source_names))


def _tensor_table(tensors: Sequence[Any], source_names: bool) -> list[str]:
    label = "source name" if source_names else "name"
    rows = [(printable(t.source_name if source_names else t.name), t) for t in tensors]
    width = max((len(n) for n, _ in rows), default=len(label))
    lines = [f"\n  {label:<{width}}  {'shape':>16}  {'dtype':<8}  {'chunks':>6}  {'stored':>10}"]
    for name, t in rows:
        shape = "x".join(map(str, t.shape)) or "scalar"
        dtype = f"int8/{t.block}" if t.block else t.dtype  # int8 codes, a scale per block of t.block
        lines.append(f"  {name:<{width}}  {shape:>16}  {dtype:<8}  {t.chunk_count:>6}  {size(t.stored_bytes):>10}")
    lines.append(f"\n  data column: {size(sum(t.stored_bytes for t in tensors))}")
    return lines


def types_text(plans: Iterable[Any]) -> str:
    """``types``: each plan, what it detects and its parts (defaults starred)."""
    lines = []
    for plan in plans:
        parts = ", ".join(f"{p}{'*' if p in plan.default_parts else ''}" for p in plan.parts)
        lines += [f"{plan.name}: {plan.summary}", f"  detects: {plan.detection()}", f"  parts:   {parts}  (* = default)"]
    return "\n".join(lines)
