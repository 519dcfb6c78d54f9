"""`--force` replaces only what streamconv wrote (docs/reliability.md, "What --force replaces").

Each refusal is checked on the command line (exit 4, one line on stderr naming what is there, no
traceback, nothing changed) and from Python (:class:`OutputRefusedError`, also a FileExistsError).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import streamconv
from streamconv.cli.app import main
from streamconv.errors import OutputExistsError, OutputRefusedError
from streamconv.format.staging import staged_output
from tests import models

REMOVE = "streamconv replaces only its own output or an empty folder, even with --force: remove it yourself or choose another --output"
KEEP = "which streamconv never replaces, even with --force: choose another --output"


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI; it must exit 4 with one line on stderr. Returns that line."""
    assert main(["convert", *argv, "-q"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.rstrip("\n")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_other_files_is_kept(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    for argv in (["--force"], ["--force", "--dry-run"], []):  # the dry run and a run without --force say the same
        line = refused(capsys, str(tiny_checkpoint), "-o", str(precious), *argv)
        assert line == (f"error: {precious}: holds 1 item ('thesis.txt') and no metadata.json of a streamconv "
                        f"output; {REMOVE}")
    with pytest.raises(OutputRefusedError) as caught:
        streamconv.convert(tiny_checkpoint, precious, force=True)
    assert isinstance(caught.value, FileExistsError) and caught.value.exit_code == 4
    assert str(caught.value).endswith("even with force=True: remove it yourself or choose another output")
    for name in ("notes.md", "data.csv"):
        (precious / name).write_text(name)
    assert "holds 3 items ('data.csv', 'notes.md', ...)" in refused(capsys, str(tiny_checkpoint), "-o", str(precious), "--force")
    assert snapshot(precious) == {"data.csv": b"data.csv", "notes.md": b"notes.md", "thesis.txt": b"four years of work"}


def test_the_current_folder_and_its_parents_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for given in (str(work), ".", os.getcwd()):  # -o "$PWD", -o .
        assert refused(capsys, str(tiny_checkpoint), "-o", given, "--force").endswith(f": is the current folder, {KEEP}")
    line = refused(capsys, str(tiny_checkpoint), "-o", str(tmp_path / "home"), "--force")
    assert line == f"error: {tmp_path / 'home'}: holds the current folder ({str(work)!r}), {KEEP}"
    with pytest.raises(OutputRefusedError, match="holds the current folder"):
        streamconv.convert(tiny_checkpoint, "..", force=True)
    assert work.is_dir() and list(work.iterdir()) == []


def test_a_file_a_fifo_and_a_file_inside_an_output_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    assert refused(capsys, str(tiny_checkpoint), "-o", str(plain), "--force") == (
        f"error: {plain}: is a file, not a folder streamconv wrote; {REMOVE}")
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    before = snapshot(out)
    inside = out / "weights.parquet"
    assert ": is a file, not a folder streamconv wrote" in refused(capsys, str(tiny_checkpoint), "-o", str(inside), "--force")
    with pytest.raises(OutputRefusedError, match="is a file"):
        streamconv.convert(tiny_checkpoint, inside, force=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert ": is a FIFO, not a folder streamconv wrote" in refused(capsys, str(tiny_checkpoint), "-o", str(fifo), "--force")
    assert plain.read_text() == "mine" and snapshot(out) == before


def test_a_symlink_is_refused_even_to_an_output(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    before = snapshot(out)
    link = tmp_path / "link"
    link.symlink_to(out)
    line = refused(capsys, str(tiny_checkpoint), "-o", str(link), "--force")
    assert line == f"error: {link}: is a symlink (to {str(out)!r}), not a folder streamconv wrote; {REMOVE}"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert ": is a symlink" in refused(capsys, str(tiny_checkpoint), "-o", str(dangling), "--force")
    assert link.is_symlink() and snapshot(out) == before and not (tmp_path / "nowhere").exists()


def test_the_source_what_holds_it_and_what_is_inside_it_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(tiny_checkpoint)
    assert refused(capsys, str(tiny_checkpoint), "-o", str(tiny_checkpoint), "--force") == (
        f"error: {tiny_checkpoint}: is the source checkpoint, {KEEP}")
    assert refused(capsys, str(tiny_checkpoint), "-o", str(tmp_path), "--force") == (
        f"error: {tmp_path}: holds the source checkpoint ({str(tiny_checkpoint)!r}), {KEEP}")
    (tiny_checkpoint / "sub").mkdir()  # empty, but inside the source
    assert refused(capsys, str(tiny_checkpoint), "-o", str(tiny_checkpoint / "sub"), "--force") == (
        f"error: {tiny_checkpoint / 'sub'}: lies inside the source checkpoint ({str(tiny_checkpoint)!r}), {KEEP}")
    weights = tiny_checkpoint / "model.safetensors"  # a lone weights file is the source, not its folder
    assert refused(capsys, str(weights), "-o", str(weights), "--force") == f"error: {weights}: is the source checkpoint, {KEEP}"
    assert ": holds the source checkpoint" in refused(capsys, str(weights), "-o", str(tiny_checkpoint), "--force")
    with pytest.raises(OutputRefusedError, match="is the source checkpoint"):
        streamconv.convert(tiny_checkpoint, tiny_checkpoint, force=True, dry_run=True)
    (tiny_checkpoint / "sub").rmdir()
    assert snapshot(tiny_checkpoint) == before


def test_an_empty_folder_is_accepted(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(tiny_checkpoint), "-o", str(empty), "-q"]) == 4
    assert capsys.readouterr().err == f"error: {empty}: output already exists; pass --force to replace it\n"
    with pytest.raises(OutputExistsError):
        streamconv.convert(tiny_checkpoint, empty)
    assert main(["convert", str(tiny_checkpoint), "-o", str(empty), "-q", "--force"]) == 0
    assert len(streamconv.load(empty)) == 12


@pytest.mark.parametrize("layout", ["single", "split", "bare", "modules"])
def test_its_own_output_is_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    """A streamconv output of every shape: one file, split files + index, no assets, module folders."""
    source: Path | str = tmp_path / "ck"
    extra: list[str] = []
    if layout == "modules":
        models.sentence_transformer(tmp_path / "ck")
    else:
        models.bert(tmp_path / "ck")
    if layout == "split":
        extra = ["--chunk-size", "4KiB", "--max-file-size", "16KiB"]
    if layout == "bare":  # a lone .safetensors file (no config): weights and metadata.json only
        source = tmp_path / "bare.safetensors"
        (tmp_path / "ck" / "model.safetensors").rename(source)
    capsys.readouterr()  # what transformers printed while saving the model
    out = tmp_path / "out"
    assert main(["convert", str(source), "-o", str(out), "-q", "--dtype", "float32", *extra]) == 0
    if layout == "split":
        assert (out / "weights.parquet.index.json").is_file()
    if layout == "bare":
        assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "weights.parquet"]
    assert main(["convert", str(source), "-o", str(out), "-q", "--force", "--dtype", "float16", *extra]) == 0
    assert capsys.readouterr().err == ""
    assert streamconv.read_metadata(out)["dtype"] == "float16"


def test_its_own_output_with_files_added_is_refused(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    (out / "notes.txt").write_text("added by hand")
    assert refused(capsys, str(tiny_checkpoint), "-o", str(out), "--force") == (
        f"error: {out}: holds 1 item streamconv did not write ('notes.txt'); {REMOVE}")
    (out / "notes.txt").unlink()
    metadata = out / "metadata.json"
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "format": "other"}))
    assert "and no metadata.json of a streamconv output" in refused(capsys, str(tiny_checkpoint), "-o", str(out), "--force")
    metadata.write_text("{not json")
    assert "and no metadata.json of a streamconv output" in refused(capsys, str(tiny_checkpoint), "-o", str(out), "--force")
    assert (out / "weights.parquet").is_file()


def test_what_appears_while_converting_is_checked_again(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    late = r"holds 1 item streamconv did not write \('late.txt'\)"
    with pytest.raises(OutputRefusedError, match=late), staged_output(out, force=True) as staging:
        (staging / "metadata.json").write_text("{}")
        (out / "late.txt").write_text("put there meanwhile")
    assert (out / "late.txt").read_text() == "put there meanwhile" and (out / "weights.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny"]  # the staging folder is gone
