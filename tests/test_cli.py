"""The CLI: options, output, exit codes, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli.app import main
from streamconv.errors import InvalidOptionError, OutputExistsError
from streamconv.sources.torch_bin import LEGACY_MAGIC
from streamconv.units import parse_size
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


class FakeBar:
    """Records what a bar is made with and fed."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.labels = kwargs, [], []
        FakeBar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_description(self, text):
        self.labels.append(text)

    def reset(self):
        self.updates.clear()

    def close(self):
        pass


@pytest.mark.parametrize("variable", ["STREAMCONV_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"])
def test_progress_bars_count_mib_and_either_variable_hides_them(
    variable: str, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeBar.made.clear()
    for name in ("STREAMCONV_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    result = streamconv.convert(tiny_checkpoint, tmp_path / "a", progress=True, tqdm_class=FakeBar)
    (bar,) = FakeBar.made
    assert bar.kwargs["unit"] == "MiB" and "MiB" in bar.kwargs["bar_format"] and bar.kwargs["desc"] == "converting"
    assert bar.kwargs["total"] == pytest.approx(result.source_bytes / 2**20)
    assert sum(bar.updates) == pytest.approx(bar.kwargs["total"])
    monkeypatch.setattr("tqdm.auto.tqdm", FakeBar)  # export's bar: the default class
    streamconv.export(tmp_path / "a", tmp_path / "hf", progress=True)
    assert FakeBar.made[1].kwargs["desc"] == "exporting"
    exported = sum((tmp_path / "hf" / "model.safetensors").stat().st_size for _ in [0])
    assert sum(FakeBar.made[1].updates) * 2**20 == pytest.approx(exported, abs=4096)  # data, not the header
    FakeBar.made.clear()
    monkeypatch.setenv(variable, "1")
    streamconv.convert(tiny_checkpoint, tmp_path / "b", progress=True, tqdm_class=FakeBar)
    streamconv.export(tmp_path / "a", tmp_path / "hf2", progress=True)
    assert FakeBar.made == []


def test_the_cli_wants_bars_on_a_terminal_only_and_never_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamconv import progress

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("STREAMCONV_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert progress.wanted(stream=Terminal()) is True
    assert progress.wanted(quiet=True, stream=Terminal()) is False
    assert progress.wanted(stream=open(os.devnull, "w")) is False  # noqa: SIM115
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert progress.wanted(stream=Terminal()) is False


def test_validate_shows_a_step_while_torch_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamconv.tools.validate.outputs import _Steps

    FakeBar.made.clear()
    monkeypatch.setattr("tqdm.auto.tqdm", FakeBar)
    monkeypatch.delenv("STREAMCONV_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    steps = _Steps(True, 5)
    steps.say("importing torch and transformers")
    assert FakeBar.made[0].kwargs["unit"] == "step" and FakeBar.made[0].labels == ["importing torch and transformers"]
    source = Path(streamconv.__file__).parent / "tools" / "validate" / "outputs.py"
    text = source.read_text()
    assert text.index('steps.say("importing torch') < text.index("mod.import_torch()")


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


def test_parse_size_follows_transformers_max_shard_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("5GiB") == 5 * 2**30
    assert parse_size("4MiB") == parse_size("4M") == parse_size("4 mib") == 4 * 1024 * 1024
    assert parse_size("16MB") == 16_000_000 and parse_size("64kB") == parse_size("64KB") == 64_000
    assert parse_size("512k") == 512 * 1024 and parse_size("100") == parse_size("100B") == parse_size(100) == 100
    assert parse_size("1.5KiB") == 1536
    for bad, needle in [("lots", "is not a size"), ("5Gb", "reads as bits"), ("0", "at least 1 byte"),
                        ("1.5", "whole number"), (True, "is a bool")]:
        with pytest.raises(InvalidOptionError, match=needle):
            parse_size(bad, "chunk_size")


def test_the_python_api_takes_the_cli_size_strings_and_dtype_spellings() -> None:
    options = streamconv.ConvertOptions(chunk_size="4MiB", max_file_size="16MB", dtype="bf16")
    assert (options.chunk_size, options.max_file_size, options.dtype) == (4 * 2**20, 16 * 10**6, "bfloat16")
    for alias, name in [("fp16", "float16"), ("f16", "float16"), ("FP32", "float32"), ("f32", "float32")]:
        assert streamconv.ConvertOptions(dtype=alias).dtype == name
    with pytest.raises(InvalidOptionError, match=r"^chunk_size='x' is not a size"):
        streamconv.ConvertOptions(chunk_size="x")
    with pytest.raises(InvalidOptionError, match=r"^workers='3' is a str; give an int$"):
        streamconv.ConvertOptions(workers="3")


def test_cli_dtype_spellings_and_sizes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    done = run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--dtype", "bf16",
               "--chunk-size", "64kB", "--max-file-size", "1MB", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["dtype"], result["chunk_size"]) == ("bfloat16", 64_000)
    assert_one_line_error(run("convert", str(tiny_checkpoint), "-o", str(tmp_path / "o2"), "--chunk-size", "5Gb"),
                          "--chunk-size 5Gb reads as bits", "5GB")
    exported = run("export", str(tmp_path / "out"), "--to", str(tmp_path / "hf"), "--dtype", "fp32",
                   "--max-shard-size", "1kB", "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["dtype"] == "float32"
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()  # 1kB = 1000 bytes: sharded


def test_every_help_shows_an_example_the_environment_and_the_exit_codes() -> None:
    from streamconv.cli.commands import COMMANDS

    for argv in [[], *([c.name] for c in COMMANDS)]:
        done = run(*argv, "--help")
        assert done.returncode == 0, argv
        text = done.stdout
        assert "example:\n  streamconv " in text, argv
        assert "HF_HUB_DISABLE_PROGRESS_BARS=1" in text and "STREAMCONV_DISABLE_PROGRESS_BARS=1" in text, argv
        assert "exit codes:" in text and "6 validation failed" in text, argv
        if argv and argv[0] in ("convert", "export"):
            assert "4MB = 4*10^6" in text and "4MiB = 4*2^20" in text


def test_usage_errors_go_to_stderr_and_a_mistyped_flag_points_at_the_command(tmp_path: Path) -> None:
    bare = run()
    assert (bare.returncode, bare.stdout) == (2, "") and "usage: streamconv" in bare.stderr
    done = run("convert", "x", "-o", str(tmp_path / "o"), "--forse")
    assert_one_line_error(done, "unrecognized arguments: --forse", "did you mean --force?",
                          "see `streamconv convert --help`")
    assert done.stdout == ""
    assert_one_line_error(run("verify", str(tmp_path), "--jsn"), "see `streamconv verify --help`", "--json")


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


def _config_only(tmp_path: Path) -> Path:
    folder = _folder(tmp_path)
    write_safetensors(folder / "model.safetensors", {"w": np.ones(2, np.float32)})
    (folder / "config.json").write_text("{}")
    return folder


def _bad_header(tmp_path: Path, header: dict, data: bytes = b"") -> Path:
    folder = _folder(tmp_path)
    write_raw_safetensors(folder / "model.safetensors", header, data)
    return folder


BAD_INPUTS = {
    "missing folder": (lambda t: t / "does-not-exist", ["does-not-exist", "no such checkpoint folder"]),
    "folder without weights": (lambda t: _folder(t), ["no model.safetensors", "pytorch_model.bin", "point SOURCE"]),
    "only pytorch_model.bin": (
        lambda t: ((_folder(t) / "pytorch_model.bin").write_bytes(b"x"), t / "ckpt")[1],
        ["pytorch_model.bin", "not a zip-format torch checkpoint", "re-download"],
    ),
    "legacy pytorch_model.bin": (  # the advice must not also call it damaged or "not safetensors"
        lambda t: ((_folder(t) / "pytorch_model.bin").write_bytes(LEGACY_MAGIC + b"\0" * 16), t / "ckpt")[1],
        ["legacy", "safe_serialization=True", "trust"],
    ),
    "config.json as SOURCE": (
        lambda t: _config_only(t) / "config.json",
        ["config.json: not a weights file", "point SOURCE at the folder that holds the model"],
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
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    before = (out / "metadata.json").read_bytes()
    done = run("convert", str(tiny_checkpoint), "-o", str(out))
    assert_one_line_error(done, "already exists", "pass --force to replace it")
    assert (out / "metadata.json").read_bytes() == before
    # A Python caller reads the argument, not the flag.
    with pytest.raises(OutputExistsError, match="already exists; pass force=True to replace it$"):
        streamconv.convert(tiny_checkpoint, out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputExistsError, match="pass force=True"):
        streamconv.export(out, tmp_path / "empty")


def test_output_under_a_file_or_empty_is_a_bad_option(tiny_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run("convert", str(tiny_checkpoint), "-o", str(blocker / "deeper" / "out"))
    assert_one_line_error(done, f"{blocker}' is a file, not a folder", "choose another --output")
    assert done.returncode == 2 and blocker.read_text() == "not a folder"
    done = run("convert", str(tiny_checkpoint), "-o", "")
    assert_one_line_error(done, "--output is empty")
    assert done.returncode == 2
    with pytest.raises(InvalidOptionError, match="^output is empty"):
        streamconv.convert(tiny_checkpoint, "")
    converted = tmp_path / "conv"
    streamconv.convert(tiny_checkpoint, converted)
    done = run("export", str(converted), "--to", str(blocker / "hf"))
    assert_one_line_error(done, "is a file, not a folder", "choose another --to")
    with pytest.raises(InvalidOptionError, match="choose another target$"):
        streamconv.export(converted, blocker / "hf")


def test_output_location_not_writable(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # /sys refuses new folders to root too; elsewhere a folder without write permission does.
    locked = Path("/sys") if os.geteuid() == 0 and Path("/sys/kernel").is_dir() else tmp_path / "locked"
    if locked != Path("/sys"):
        locked.mkdir()
        locked.chmod(0o500)
    try:
        done = run("convert", str(tiny_checkpoint), "-o", str(locked / "streamconv-out"))
        assert_one_line_error(done, "cannot write the output here", "choose a writable --output")
        assert done.returncode == 4
        with pytest.raises(streamconv.StreamconvError, match="choose a writable output$"):
            streamconv.convert(tiny_checkpoint, locked / "streamconv-out")
    finally:
        if locked != Path("/sys"):
            locked.chmod(0o700)


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


def test_quiet_works_on_every_command(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out, hf = str(tmp_path / "out"), str(tmp_path / "hf")
    for argv in (["convert", str(tiny_checkpoint), "-o", out, "-q"], ["-q", "inspect", out], ["inspect", out, "-q"],
                 ["verify", out, "--quiet"], ["export", out, "--to", hf, "-q"], ["-q", "types"]):
        done = run(*argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), argv
    assert json.loads(run("inspect", out, "-q", "--json").stdout)["tensors"]  # --json still prints
    # -q keeps errors: one line on stderr.
    assert_one_line_error(run("verify", str(tmp_path), "-q"), "no converted weights")


def test_inspect_json_lists_tensors_in_the_order_of_the_text(tmp_path: Path) -> None:
    names = ["layer.10.w", "layer.2.w", "b", "layer.1.w", "a"]
    write_safetensors(tmp_path / "src" / "model.safetensors", {n: np.ones(2, np.float32) for n in names})
    streamconv.convert(tmp_path / "src", tmp_path / "out")
    text = run("inspect", str(tmp_path / "out")).stdout
    table = text.split("\n  name", 1)[1].split("\n\n")[0].splitlines()[1:]  # the rows, up to the blank line
    listed = [line.split()[0] for line in table]
    assert listed == ["a", "b", "layer.1.w", "layer.2.w", "layer.10.w"]
    data = json.loads(run("inspect", str(tmp_path / "out"), "--json").stdout)
    assert [t["name"] for t in data["tensors"]] == listed


def test_interrupt_lines_name_what_export_and_validate_were_doing(tmp_path: Path) -> None:
    from streamconv.cli.app import _interrupt_line, _parse, build_parser
    from streamconv.cli.commands import command
    from streamconv.cli.interrupts import Terminated, output_identity

    parser = build_parser()
    args = _parse(parser, ["export", "OUT", "--to", str(tmp_path / "hf")])
    assert _interrupt_line(KeyboardInterrupt(), command("export"), args, None) == (
        f"error: interrupted; nothing was written under {tmp_path / 'hf'}")
    (tmp_path / "hf").mkdir()
    before = output_identity(str(tmp_path / "hf"))
    assert _interrupt_line(Terminated(), command("export"), args, before) == (
        f"error: terminated (SIGTERM); {tmp_path / 'hf'} still holds the old output, unchanged")
    args = _parse(parser, ["validate", "OUT"])
    assert _interrupt_line(KeyboardInterrupt(), command("validate"), args, None) == (
        "error: interrupted; `streamconv validate OUT` stopped, nothing was written")


def test_options_that_cannot_work_are_exit_2(tiny_checkpoint: Path, tmp_path: Path) -> None:
    streamconv.convert(tiny_checkpoint, tmp_path / "out")
    for argv, needle in [
        (["validate", str(tmp_path / "out"), "--min-cosine", "1.5"], "--min-cosine 1.5 is above 1"),
        (["validate", str(tmp_path / "out"), "--max-nmse", "-1"], "--max-nmse -1.0 is below 0"),
        (["convert", str(tiny_checkpoint), "-o", str(tmp_path / "o2"), "--include", "nomatch*"],
         "no tensor left to convert after --include/--exclude"),
        (["convert", str(tiny_checkpoint), "-o", str(tmp_path / "o2"), "--exclude", "*"], "--include/--exclude"),
    ]:
        done = run(*argv)
        assert_one_line_error(done, needle)
        assert done.returncode == 2, argv
    assert not (tmp_path / "o2").exists()
    with pytest.raises(InvalidOptionError, match="^min_cosine=1.5 is above 1"):
        streamconv.validate(tmp_path / "out", min_cosine=1.5)


def test_error_messages_name_the_python_argument_or_the_flag() -> None:
    from streamconv.cli.app import _one_line, build_parser
    from streamconv.errors import DiskFullError, OutputNotWritableError

    parser = build_parser()
    full = DiskFullError(Path("hf"), 0, 12 * 2**20, 28, "no space left on device", option="target")
    assert str(full) == ("hf: cannot write the output (no space left on device); 12.0 MiB free; free some space, "
                         "raise the limit (quota, `ulimit -f`) or choose another target")
    assert _one_line(full, parser).endswith("or choose another --to")
    sized = DiskFullError(Path("out"), 43 * 2**20, 12 * 2**20, 28, "no space left on device")
    assert "it needs about 43.0 MiB, 12.0 MiB free;" in str(sized)
    assert _one_line(sized, parser).endswith("or choose another --output")
    assert _one_line(OutputExistsError(Path("o{1}")), parser) == "o{1}: output already exists; pass --force to replace it"
    assert str(OutputNotWritableError(Path("x"), "a {weird} reason", "target")).endswith("choose a writable target")
    level = InvalidOptionError("{level=} has no effect with {compression=none}", "level", level=5)
    assert (str(level), _one_line(level, parser)) == (
        "level=5 has no effect with compression='none'", "--level 5 has no effect with --compression none")


def test_one_table_of_commands_and_short_functions() -> None:
    """Each command is one row (parser, handler, module); the parser's subcommands are exactly the rows."""
    import ast
    import importlib

    from streamconv.cli import app, commands

    rows = [c.name for c in commands.COMMANDS]
    assert len(rows) == len(set(rows))
    assert list(app._subparsers(app.build_parser())) == rows
    for row in commands.COMMANDS:
        importlib.import_module(row.module)
    cli = Path(app.__file__).parent
    long = [f"{p.name}:{n.name}" for p in cli.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef) and (n.end_lineno or n.lineno) - n.lineno + 1 > 60]
    assert long == []
