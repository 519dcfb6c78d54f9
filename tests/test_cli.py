"""The CLI: options, output, exit codes, and one clear line for every bad input."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli.app import main, parse_size
from tests.conftest import write_raw_safetensors, write_safetensors, write_sharded


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a separate process, stderr not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "streamconv", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "unexpected" not in lines[0]  # every expected failure is a StreamconvError
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_convert_prints_a_summary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    assert done.stdout.startswith(f"converted {tiny_checkpoint} -> {tmp_path / 'out'}")
    assert "12 tensors" in done.stdout and "float16, zstd, tuned per plane" in done.stdout


def test_old_spellings_and_options(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = run(
        "convert", "--model", str(tiny_checkpoint), "--output", str(tmp_path / "out"),
        "--dtype", "keep", "--compression", "none", "--include", "f*", "--exclude", "f64",
        "--chunk-size", "64", "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dtype"] == "keep" and result["compression"] == "none"
    assert result["tensor_count"] == 2
    assert sorted(streamconv.load(tmp_path / "out")) == ["f16", "f32"]


def test_quiet_prints_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "-q")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_dry_run_writes_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dry_run"] is True
    assert {t["name"] for t in result["tensors"]} >= {"f32", "i64"}
    assert not (tmp_path / "out").exists()
    text = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--dry-run")
    assert "would hold" in text.stdout and "estimated" in text.stdout


def test_inspect(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"))
    text = run("inspect", str(tmp_path / "out"))
    assert text.returncode == 0 and "12 tensors" in text.stdout and "bf16" in text.stdout
    data = json.loads(run("inspect", str(tmp_path / "out"), "--json").stdout)
    assert data["metadata"]["tensor_count"] == 12
    assert {t["name"]: t["dtype"] for t in data["tensors"]}["i8"] == "int8"
    assert_one_line_error(run("inspect", str(tmp_path)), "no converted weights", "streamconv convert")
    assert_one_line_error(run("validate", str(tmp_path / "nowhere")), "no metadata", "streamconv convert")


def test_progress_bar_env_switch(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bars = []

    class FakeBar:
        def __init__(self, **kwargs):
            bars.append(kwargs)

        def update(self, n):
            bars.append(n)

        def close(self):
            pass

    streamconv.convert(tiny_checkpoint, tmp_path / "a", progress=True, tqdm_class=FakeBar)
    assert bars[0]["unit"] == "B" and sum(bars[1:]) == bars[0]["total"]
    bars.clear()
    monkeypatch.setenv("STREAMCONV_DISABLE_PROGRESS_BARS", "1")
    streamconv.convert(tiny_checkpoint, tmp_path / "b", progress=True, tqdm_class=FakeBar)
    assert bars == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = run("convert", str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("command", ["validate", "verify", "inspect"])
def test_debug_works_before_the_command_as_after_it(command: str, tmp_path: Path) -> None:
    """`streamconv --debug CMD` is `streamconv CMD --debug`: the command's default must not reset it."""
    not_converted = str(tmp_path)
    for argv in (["--debug", command, not_converted], [command, "--debug", not_converted]):
        with pytest.raises(streamconv.StreamconvError):
            main(argv)
    assert main([command, not_converted]) != 0  # without it: one line, no traceback
    done = run("--debug", command, not_converted)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_parse_size() -> None:
    assert parse_size("4MiB") == parse_size("4M") == 4 * 1024 * 1024
    assert parse_size("512k") == 512 * 1024 and parse_size("100") == 100
    with pytest.raises(argparse.ArgumentTypeError, match="'lots' is not a size"):
        parse_size("lots")


def test_usage_errors_are_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert_one_line_error(run("convert", str(tiny_checkpoint)), "-o/--output")
    assert_one_line_error(run("convert", "-o", str(tmp_path / "o")), "missing SOURCE")
    assert_one_line_error(run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--dtype", "int4"), "int4")
    assert_one_line_error(run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--level", "99"), "level")
    assert_one_line_error(run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--chunk-size", "x"), "size")
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--type", "nosuch"]) != 0
    assert not (tmp_path / "o").exists()


# Every bad input of the issue: one line naming the file and the fix, non-zero exit, no output.

def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    return folder


def _bad_header(tmp_path: Path, header: dict, data: bytes = b"") -> Path:
    folder = _folder(tmp_path)
    write_raw_safetensors(folder / "model.safetensors", header, data)
    return folder


BAD_INPUTS = {
    "missing folder": (lambda t: t / "does-not-exist", ["does-not-exist", "no such checkpoint folder"]),
    "folder without weights": (lambda t: _folder(t), ["no model.safetensors", "point SOURCE"]),
    "only pytorch_model.bin": (
        lambda t: ((_folder(t) / "pytorch_model.bin").write_bytes(b"x"), t / "ckpt")[1],
        ["pytorch_model.bin", "safe_serialization=True"],
    ),
    "empty shard": (
        lambda t: ((_folder(t) / "model.safetensors").write_bytes(b""), t / "ckpt")[1],
        ["model.safetensors", "file is empty", "re-download"],
    ),
    "truncated shard": (
        lambda t: _bad_header(t, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        ["model.safetensors", "lie outside", "re-download"],
    ),
    "header length past the end": (
        lambda t: write_raw_safetensors(_folder(t) / "model.safetensors", {}, b"", header_len=10**6).parent,
        ["header length 1000000 runs past the end"],
    ),
    "header not JSON": (
        lambda t: ((_folder(t) / "model.safetensors").write_bytes((9).to_bytes(8, "little") + b"{not json"), t / "ckpt")[1],
        ["header is not JSON"],
    ),
    "data offsets outside the file": (
        lambda t: _bad_header(t, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [100, 104]}}, b"\0" * 8),
        ["data offsets [100, 104]", "outside"],
    ),
    "shape x dtype does not match": (
        lambda t: _bad_header(t, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        ["'w'", "needs 12 bytes but its data range holds 8"],
    ),
    "unsupported dtype": (
        lambda t: _bad_header(t, {"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8),
        ["'w'", "F8_E4M3", "--exclude"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(case: str, tmp_path: Path) -> None:
    make, needles = BAD_INPUTS[case]
    source = make(tmp_path)
    done = run("convert", str(source), "-o", str(tmp_path / "out"))
    assert_one_line_error(done, *needles)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


def _shards(tmp_path: Path) -> Path:
    return write_sharded(
        tmp_path / "sharded",
        [{"a": np.ones(2, np.float32)}, {"b": np.ones(2, np.float32), "c": np.zeros(1, np.float32)}],
    )


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    folder = _shards(tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    done = run("convert", str(folder), "-o", str(tmp_path / "out"))
    assert_one_line_error(done, "model.safetensors.index.json", "shard files missing: model-00002-of-00002.safetensors")
    assert not (tmp_path / "out").exists()


def test_index_not_json(tmp_path: Path) -> None:
    folder = _shards(tmp_path)
    (folder / "model.safetensors.index.json").write_text("{oops")
    assert_one_line_error(run("convert", str(folder), "-o", str(tmp_path / "out")), "index is not JSON")


def test_same_tensor_in_two_shards_and_every_mismatch_in_one_error(tmp_path: Path) -> None:
    folder = _shards(tmp_path)
    write_safetensors(folder / "model-00001-of-00002.safetensors", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32), "x": np.ones(1, np.float32)})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    done = run("convert", str(folder), "-o", str(tmp_path / "out"))
    assert_one_line_error(
        done,
        "tensors in two shards: b (model-00001-of-00002.safetensors and model-00002-of-00002.safetensors)",
        "listed but not in their shard: ghost",
        "in shards but not in the index: x",
    )


def test_output_exists_without_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_line_error(run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out")), "already exists", "--force")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_output_location_not_writable(tiny_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run("convert", str(tiny_checkpoint), "-o", str(blocker / "out"))
    assert_one_line_error(done, "cannot write the output here", "choose a writable location")
    assert blocker.read_text() == "not a folder"


def test_bad_options_fail_before_anything_is_written(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for options in (["--level", "30", "--dry-run"], ["--workers", "0"], ["--chunk-size", "0"]):
        done = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), *options)
        assert_one_line_error(done)
        assert not (tmp_path / "out").exists(), options


PROCESS_STATE = (
    "import gc, os, sys\n"
    "from streamconv.cli import main\n"
    "code = main({argv})\n"
    "print(code, os.environ.get('OPENBLAS_NUM_THREADS'), gc.isenabled(), gc.get_freeze_count() > 0)\n"
)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (None, {}, "0 1 True True"),  # the program: one BLAS thread, start-up objects out of the collector's way
        (None, {"OPENBLAS_NUM_THREADS": "3"}, "0 3 True True"),  # the user's choice stays
        ("list(sys.argv[1:])", {}, "0 None True False"),  # main(argv) in someone's process: left alone
    ],
)
def test_the_program_starts_as_one_and_main_with_argv_leaves_the_process_alone(
    argv: str | None, env: dict[str, str], expected: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code = PROCESS_STATE.format(argv=argv or "")
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | env
    done = subprocess.run(
        [sys.executable, "-c", code, "convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, env=environ,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()


def test_a_command_that_uses_blas_keeps_its_threads() -> None:
    code = (
        "import gc, os\n"
        "gc.disable()\n"
        "from streamconv.cli.startup import program_start\n"
        "with program_start(uses_blas=True):\n"
        "    import numpy\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'), gc.isenabled(), gc.get_freeze_count())\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True)
    assert done.stdout.split() == ["None", "False", "0"]  # and a collector the user turned off stays off
