"""Text the CLI prints: conversion summaries, sizes, codec labels, names made safe for a terminal."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_NAME_WIDTH", "codec_label", "conversion_summary", "printable", "size"]

#: Longest tensor name shown in a table; longer ones are cut in the middle (``--json`` keeps them).
MAX_NAME_WIDTH = 96


def conversion_summary(result: Any, requested: str) -> str:
    lines = []
    if result.dry_run:
        lines.append(f"dry run: {result.source} -> {result.output_dir} would hold:")
        width = max(len(t["name"]) for t in result.tensors)
        for t in result.tensors:
            shape = "x".join(map(str, t["shape"])) or "scalar"
            lines.append(
                f"  {t['name']:<{width}}  {shape:>16}  {t['source_dtype']:>8} -> {t['dtype']:<8}  {size(t['bytes']):>10}"
            )
    else:
        lines.append(f"converted {result.source} -> {result.output_dir}")
    how = "detected" if result.detected else "no plan recognised the checkpoint"
    if requested != "auto":
        how = f"--type {requested}"
    lines.append(f"  model type {result.model_type} ({how}), parts {','.join(result.parts)}")
    codec = codec_label(result.compression, result.level)
    lines.append(
        f"  {result.tensor_count} tensors, {result.parameter_count:,} parameters, "
        f"{result.chunk_count} chunks, {result.dtype}, {codec}"
    )
    verb = "estimated" if result.dry_run else "written"
    lines.append(
        f"  {_mib(result.source_bytes)} -> {_mib(result.output_bytes)} {verb} "
        f"({result.ratio:.2f}x) in {result.seconds:.2f} s"
    )
    if result.dry_run:
        lines.extend(
            f"  asset {a['path']}" + (f" (built from {', '.join(a['built_from'])})" if "built_from" in a else "")
            for a in result.assets
        )
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines)


def codec_label(compression: Any, level: Any) -> str:
    if isinstance(compression, dict):  # format 1: {"codec": ..., "level": ...}
        compression, level = compression.get("codec"), compression.get("level")
    if compression != "zstd":
        return "none"
    return "zstd, tuned per plane" if level is None else f"zstd-{level}"


def _mib(n: float) -> str:
    """Bytes in MiB, the unit of the convert progress bar (bytes scaled by 1024)."""
    return f"{n / 1024**2:,.2f} MiB"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def printable(text: str, limit: int = MAX_NAME_WIDTH) -> str:
    """``text`` safe for a terminal table: control characters escaped, long text cut in the middle."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(safe) <= limit:
        return safe
    keep = (limit - 3) // 2
    return f"{safe[:keep]}...{safe[-keep:]}"
