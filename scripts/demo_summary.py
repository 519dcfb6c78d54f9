"""`make demo`'s last words: the validation report in plain words, where the output is, what to try next.

Usage: python scripts/demo_summary.py OUTPUT REPORT.json, REPORT.json being what
`streamconv validate OUTPUT --json` printed. Exits 6 when the validation failed (as `validate` does),
2 when there is no report (validate stopped with an error, shown above).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _plain(check: dict[str, Any], dtype: str) -> str:
    """One check of the report, said without its jargon."""
    name, figures, limits = check["name"], check.get("figures", {}), check.get("limits", {})
    count = {k: int(v) for k, v in figures.items() if k in ("tensors", "loaded", "unused", "items")}
    if name == "names":
        return f"names: the {count['tensors']} stored tensors have the names the model plan gives them"
    if name == "weights":
        return f"weights: each of the {count['tensors']} is the original tensor cast to {dtype}, bit for bit"
    if name == "model-tensors":
        unused = count.get("unused", 0)
        extra = f" ({unused} more, which the model does not use, checked as weights)" if unused else ""
        return f"model: all {count['loaded']} tensors the model needs came from the output{extra}"
    if name.startswith(("probe:", "outputs:")):
        probe = name.partition(":")[2]
        close = (
            f"cosine similarity {figures['min_cosine']:.7f} or more (1 = identical, the limit is {limits['min_cosine']}), "
            f"error {figures['nmse']:.1e} of the output's energy (limit {limits['max_nmse']:g})"
        )
        if name.startswith("probe:"):
            return f"the check itself: on the original weights, its {probe} matches the model library's own: {close}"
        return f"{probe} of {count['items']} test inputs, converted vs original model: {close}"
    return f"{name}: {check['detail']}"


def main(output: str, report_path: str) -> int:
    """Print the summary; the exit code says whether the validation passed."""
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        print(f"==> no validation report: `streamconv validate {output}` stopped with the error above")
        return 2
    metadata = json.loads((Path(output) / "metadata.json").read_text(encoding="utf-8"))
    verdict = "passed" if report["passed"] else "FAILED"
    seconds = report["seconds"]
    print(f"==> validation {verdict} ({seconds:.1f} s): the original model beside the same model holding the converted weights")
    for check in report["checks"]:
        print(f"    {'ok  ' if check['passed'] else 'FAIL'} {_plain(check, metadata['dtype'])}")
    mib = 1024 * 1024
    print(
        f"==> done: {output} holds {metadata['tensor_count']} tensors in {metadata['output_bytes'] / mib:.1f} MiB "
        f"(from {metadata['source_bytes'] / mib:.1f} MiB). Try next:"
    )
    print(f"    .venv/bin/streamconv inspect {output}")
    print(f"    .venv/bin/python -c \"import streamconv; w = streamconv.load('{output}'); print(len(w), 'arrays')\"")
    print(f"    .venv/bin/streamconv export {output} --to {output}-hf   # a Hugging Face checkpoint again")
    return 0 if report["passed"] else 6


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
