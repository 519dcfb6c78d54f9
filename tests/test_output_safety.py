"""The output name under kills, interrupts and a full disk (docs/reliability.md, "Atomicity").

Each test runs ``python -m streamconv`` as a separate process, as a user or a supervisor would,
and kills or limits it; then it reads what is under the output name. The kills and interrupts come
at named steps of the run (tests/stop_at.py): every step where the folders change hands, the
same on every run, rather than after guessed sleeps.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import streamconv
from streamconv.errors import DiskFullError, OutputExistsError
from streamconv.format import staging as output_module
from streamconv.format.staging import clean_leftovers, staged_output, staging_path
from tests.conftest import random_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}
LEFTOVER = re.compile(r"\.out\.streamconv-(incomplete|old)-\d+")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB of float32 in 12 tensors: written in about a tenth of a second."""
    return random_checkpoint(tmp_path_factory.mktemp("ck"), 12, (512, 1024))


def start(checkpoint: Path, out: Path, *extra: str, preexec_fn=None, stop: tuple[str, str] | None = None
          ) -> subprocess.Popen[str]:
    """``streamconv convert``; with ``stop=(SIGNAL, STEPS)`` it signals itself at those steps (tests/stop_at.py)."""
    program = ["-m", "streamconv"] if stop is None else ["-m", "tests.stop_at", *stop, "--"]
    return subprocess.Popen(
        [sys.executable, *program, "convert", str(checkpoint), "-o", str(out), "-q", "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=preexec_fn,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def wait_until(proc: subprocess.Popen[str], ready, timeout: float = 30) -> bool:
    """Poll every millisecond until ``ready()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def mapped(proc: subprocess.Popen[str], library: str):
    """A check that the process has loaded ``library`` (it is importing that module, or past it)."""
    def ready() -> bool:
        try:
            return library in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False
    return ready


def stored_dtype(out: Path, full: bool = True) -> str:
    """The dtype of the complete output under ``out``: metadata readable, every tensor loadable."""
    metadata = json.loads((out / "metadata.json").read_text())
    if not full:
        return metadata["dtype"]
    tensors = streamconv.load(out)
    assert len(tensors) == 12 and all(t.shape == (512, 1024) for t in tensors.values())
    assert {str(t.dtype) for t in tensors.values()} == {metadata["dtype"]}
    return metadata["dtype"]


def exchange_supported(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return output_module._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if LEFTOVER.fullmatch(p.name))


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# The steps of `convert --force` over an old output where the folders change hands, and what the
# output name holds when the run is killed there.
REMOVE, FLUSH = "streamconv.format.staging._remove", "streamconv.format.writer.WeightsWriter._flush"
METADATA, EXCHANGE = "streamconv.pipeline.convert.write_json", "streamconv.format.staging._exchange"
KILLS = [
    (f"before:{REMOVE}", "old"),  # starting: no staging folder yet
    (f"before:{FLUSH}", "old"),  # the staging folder made, the weights file open, no row group in it
    (f"after:{FLUSH}", "old"),  # one row group written
    (f"before:{METADATA}", "old"),  # the weights complete, metadata.json not yet
    (f"before:{EXCHANGE}", "old"),  # the new output complete under the staging name
    (f"after:{EXCHANGE}", "new"),  # swapped: the old output now under the staging name
    (f"after:{EXCHANGE},after:os.unlink", "new"),  # the old output half removed
]


def test_force_killed_at_every_step_leaves_the_old_or_the_new_output(checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL at each step of `convert --force`; the name always holds a complete output."""
    if not exchange_supported(tmp_path):
        pytest.skip("no atomic exchange on this filesystem: the fallback has a documented window")
    out = tmp_path / "out"
    assert finish(start(checkpoint, out, "--dtype", "float32")) == (0, "")
    after = stored_dtype(out)
    for steps, expected in KILLS:
        before = after
        target = "float16" if before == "float32" else "float32"
        proc = start(checkpoint, out, "--force", "--dtype", target, stop=("KILL", steps))
        assert finish(proc)[0] == -signal.SIGKILL, steps
        after = stored_dtype(out)  # never missing, never partial
        assert after == {"old": before, "new": target}[expected], steps

    # The next run removes what the killed ones left, and says so.
    left = leftovers(tmp_path)
    assert left == [staging_path(out, proc.pid).name]  # the last kill's (each run removed those before it)
    proc = start(checkpoint, out, "--force", "--json")
    done = json.loads(proc.communicate(timeout=60)[0])
    assert leftovers(tmp_path) == []
    assert [w for w in done["warnings"] if w.startswith("removed ")] == [
        f"removed {name}, left by an interrupted run" for name in left
    ]


def test_only_dead_runs_leftovers_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        for path in (staging_path(out, dead.pid), staging_path(out, dead.pid, tag="streamconv-old"),
                     staging_path(out, live.pid), staging_path(out, 1), tmp_path / ".other.streamconv-incomplete-1"):
            path.mkdir()
            (path / "weights.parquet").write_bytes(b"partial")
        (tmp_path / f".out.streamconv-incomplete-{dead.pid}x").mkdir()  # not a name streamconv writes

        removed = clean_leftovers(out)

        assert removed == sorted([staging_path(out, dead.pid), staging_path(out, dead.pid, tag="streamconv-old")])
        # A live run's folder (and a PID reused by a live process: PID 1) is never touched.
        assert (staging_path(out, live.pid) / "weights.parquet").read_bytes() == b"partial"
        assert (staging_path(out, 1) / "weights.parquet").exists()
        assert (tmp_path / ".other.streamconv-incomplete-1").exists()
        assert (tmp_path / f".out.streamconv-incomplete-{dead.pid}x").exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_interrupt_is_one_true_line(checkpoint: Path, tmp_path: Path, sig: signal.Signals, code: int, word: str) -> None:
    """The line says what the output name holds: nothing, the old output, or the new one."""
    out = tmp_path / "out"
    # While starting (importing numpy, no output yet): nothing was written.
    proc = start(checkpoint, out)
    assert wait_until(proc, mapped(proc, "_multiarray_umath"))
    proc.send_signal(sig)
    returncode, err = finish(proc)
    assert returncode == code
    assert one_line(err) == f"error: {word}; nothing was written under {out}"
    assert list(tmp_path.iterdir()) == []

    assert finish(start(checkpoint, out, "--dtype", "float32")) == (0, "")
    for steps, expected in [(f"before:{FLUSH}", "old"), (f"before:{EXCHANGE}", "old"), (f"after:{EXCHANGE}", "new")]:
        before = stored_dtype(out, full=False)
        target = "float16" if before == "float32" else "float32"
        returncode, err = finish(start(checkpoint, out, "--force", "--dtype", target, stop=(sig.name[3:], steps)))
        after = stored_dtype(out, full=False)
        assert leftovers(tmp_path) == []  # the interrupted run removed its own folder
        assert returncode == code, (steps, err)
        state = {"old": "still holds the old output, unchanged", "new": "holds the new output, complete"}[expected]
        assert one_line(err) == f"error: {word}; {out} {state}", steps
        assert after == {"old": before, "new": target}[expected], steps


def test_startup_interrupt_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    """Ctrl-C while Python imports numpy, pyarrow: one line, exit 130, no traceback."""
    for library in ("_multiarray_umath", "libarrow"):
        proc = start(checkpoint, tmp_path / "out")
        assert wait_until(proc, mapped(proc, library)), library
        proc.send_signal(signal.SIGINT)
        returncode, err = finish(proc)
        assert (returncode, one_line(err)) == (130, f"error: interrupted; nothing was written under {tmp_path / 'out'}")
    assert list(tmp_path.iterdir()) == []


def _file_size_limit() -> None:  # in the child, before exec: writes beyond 4 MiB fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


@pytest.mark.parametrize("force", [False, True])
def test_full_disk_is_exit_4_and_leaves_nothing(checkpoint: Path, tmp_path: Path, force: bool) -> None:
    out = tmp_path / "out"
    if force:
        _make(out, "the previous output")
    proc = start(checkpoint, out, *(["--force"] if force else []), preexec_fn=_file_size_limit)
    returncode, err = finish(proc)
    assert returncode == 4
    line = one_line(err)
    assert re.fullmatch(
        rf"error: {re.escape(str(out))}: cannot write the output \(a file grew beyond the file-size limit\); "
        r"it needs about 12\.0 MiB, [0-9.]+ MiB free; free some space, raise the limit \(quota, `ulimit -f`\) "
        r"or choose another --output",
        line,
    ), line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if force else [])
    if force:
        assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "weights.parquet"]
        assert (out / "weights.parquet").read_text() == "the previous output"


def test_disk_full_error_in_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as caught, staged_output(out, force=False, expected_bytes=3 << 20):
        raise OSError(errno.ENOSPC, "No space left on device")
    err = caught.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.exit_code == 4
    assert err.output == out and err.needed == 3 << 20 and err.free > 0
    assert str(err).startswith(f"{out}: cannot write the output (no space left on device); it needs about 3.0 MiB, ")
    assert list(tmp_path.iterdir()) == []


def _make(out: Path, text: str) -> None:
    """A folder --force may replace: a metadata.json of the format that lists its one weights file."""
    out.mkdir()
    (out / "weights.parquet").write_text(text)
    (out / "metadata.json").write_text(json.dumps({"format": "streamconv", "format_version": 3,
                                                   "files": [{"path": "weights.parquet"}]}))


def test_exchange_swaps_and_its_fallbacks_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _make(a, "A")
    _make(b, "B")
    if not output_module._exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE here")
    assert (a / "weights.parquet").read_text() == "B" and (b / "weights.parquet").read_text() == "A"

    # The raw syscall, as where libc has no renameat2 wrapper (glibc < 2.28).
    libc = ctypes.CDLL(None, use_errno=True)
    monkeypatch.setattr(output_module.ctypes, "CDLL", lambda *a, **k: type("NoWrapper", (), {"syscall": libc.syscall})())
    assert output_module._exchange(a, b)
    assert (a / "weights.parquet").read_text() == "A"
    monkeypatch.undo()

    # A filesystem without the exchange (EINVAL): two renames, no -old- folder left.
    def unsupported(*args: object) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(output_module, "_renameat2", lambda: unsupported)
    out = tmp_path / "out"
    _make(out, "old")
    with staged_output(out, force=True) as staging:
        (staging / "weights.parquet").write_text("new")
    assert (out / "weights.parquet").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]

    with pytest.raises(OutputExistsError), staged_output(out, force=False):  # appeared meanwhile: kept
        pass
    assert (out / "weights.parquet").read_text() == "new"
