"""What every model family must do, run on each tiny model of tests/models.FAMILIES.

A new family is covered by adding its builder and one line to that table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.numpy import load_file

import streamconv
from streamconv.plans import get_plan
from streamconv.stages.names import matches_any
from tests import models


@pytest.fixture(scope="module", params=sorted(models.FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[models.Family, Path]:
    case = models.FAMILIES[request.param]
    return case, case.build(tmp_path_factory.mktemp(request.param))


def test_default_parts_keep_exactly_the_family_default(family: tuple[models.Family, Path], tmp_path: Path) -> None:
    case, folder = family
    source = load_file(str(folder / "model.safetensors"))
    result = streamconv.convert(folder, tmp_path / "out", dtype="keep")
    assert (result.model_type, result.detected) == (case.plan, True)
    kept = {t.source_name: t.name for t in streamconv.describe(result.output_dir)}
    assert set(kept) == {name for name in source if matches_any(name, case.default)}
    plan = get_plan(case.plan)()
    layout = plan.layout(streamconv.open_checkpoint(folder))
    assert all(stored == plan.stored_name(layout, name) for name, stored in kept.items())


def test_every_part_round_trips_by_source_name(family: tuple[models.Family, Path], tmp_path: Path) -> None:
    case, folder = family
    source = load_file(str(folder / "model.safetensors"))
    out = streamconv.convert(folder, tmp_path / "out", dtype="keep", parts=list(case.parts)).output_dir
    loaded = streamconv.load(out, names="source")
    assert set(loaded) == set(source)
    for name, array in source.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()


def test_converted_model_validates(family: tuple[models.Family, Path], tmp_path: Path) -> None:
    from streamconv.tools.validate import validate

    case, folder = family
    out = streamconv.convert(folder, tmp_path / "out", parts=list(case.parts)).output_dir
    report = validate(out)
    assert report.passed, [(c.name, c.detail) for c in report.checks]
    assert any(c.name.startswith("outputs") for c in report.checks)


def test_export_round_trips_and_loads_in_its_own_class(family: tuple[models.Family, Path], tmp_path: Path) -> None:
    """Every part converted with ``keep``, exported: the source's tensors bit for bit, and the
    source's own architecture class loads the export with no missing or unexpected key."""
    import json

    import transformers

    case, folder = family
    source = load_file(str(folder / "model.safetensors"))
    out = streamconv.convert(folder, tmp_path / "out", dtype="keep", parts=list(case.parts)).output_dir
    streamconv.export(out, tmp_path / "hf")
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(exported) == set(source)
    for name, array in source.items():
        assert exported[name].dtype == array.dtype and exported[name].tobytes() == array.tobytes(), name
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, architecture).from_pretrained(tmp_path / "hf", output_loading_info=True)
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    assert problems == {}, architecture
    state = model.state_dict()
    assert all(state[k].numpy().tobytes() == source[k].tobytes() for k in source if k in state)
