"""SIGINT and SIGTERM at any moment of ``convert`` end it at once, with its one line (docs/reliability.md,
"No hang").

Each try starts ``python -m streamconv convert`` on a 24 MiB checkpoint, sends the signal at a
different moment of the writing (the writer's hashing thread is busy then: an interrupt used to
leave it waiting forever, 1 run in 30), and expects the process to be gone within
:data:`HANG_LIMIT` seconds of the signal, with exit 130 or 143, one line on stderr and nothing
under the output name. A run the signal reached only after it had finished exits 0 with its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamconv.format.hashing import FileHasher
from streamconv.format.staging import staging_path
from tests.conftest import random_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}
#: The guarantee of docs/reliability.md: gone this many seconds after the signal.
HANG_LIMIT = 2.0
#: When the signal is sent, as a fraction of a full run's writing time, from the staging folder's appearance.
MOMENTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB of float32 in 12 tensors."""
    return random_checkpoint(tmp_path_factory.mktemp("ck"), 12, (512, 1024))


def start(checkpoint: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamconv", "convert", str(checkpoint), "-o", str(out), "-q", "--dtype", "float32",
         "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def staging_seen(proc: subprocess.Popen[str], out: Path) -> bool:
    """Wait until the run's staging folder appears (writing has begun); False if it ended first."""
    staging = staging_path(out, proc.pid)
    deadline = time.monotonic() + 30
    while not staging.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.parametrize("split", [False, True], ids=["one-file", "split"])
def test_a_signal_at_any_moment_ends_convert_at_once(checkpoint: Path, tmp_path: Path, split: bool) -> None:
    extra = ("--max-file-size", "4MiB") if split else ()
    out = tmp_path / "out"
    proc = start(checkpoint, out, *extra)
    assert staging_seen(proc, out)
    begun = time.monotonic()
    assert proc.communicate(timeout=60)[1] == "" and proc.returncode == 0
    writing = time.monotonic() - begun
    interrupted = 0
    for i, moment in enumerate(MOMENTS):
        sig, code, word = ((signal.SIGINT, 130, "interrupted") if i % 2 == 0
                           else (signal.SIGTERM, 143, "terminated (SIGTERM)"))
        target = tmp_path / f"out{i}"
        proc = start(checkpoint, target, *extra)
        if staging_seen(proc, target):
            time.sleep(writing * moment)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=HANG_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{sig.name} at {moment:.0%} of the writing: still running {HANG_LIMIT} s later")
        if proc.returncode == 0:  # the run had finished: its output is complete
            assert err == "" and (target / "metadata.json").is_file()
            continue
        assert proc.returncode == code, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        if err == f"error: {word}; {target} holds the new output, complete\n":  # came just after the publish
            assert (target / "metadata.json").is_file()
            continue
        interrupted += 1
        assert err.startswith(f"error: {word}; nothing "), err
        assert not target.exists()
    assert interrupted >= len(MOMENTS) // 2, "the signals came after most runs had finished"


def test_abandon_returns_at_once_whatever_the_writer_was_doing(tmp_path: Path) -> None:
    """Told to stop while it hashes, or after the writer was interrupted between two calls, the
    hashing thread stops, and abandon never waits for it long."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(64 << 20))
    for tells in range(4):
        hasher = FileHasher(path)
        for _ in range(tells):
            hasher.grown()
        hasher.abandon()
        hasher.abandon()
        assert not hasher._thread.is_alive()
        assert hasher._thread.daemon


_INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys

class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "streamconv.cli.commands":  # the CLI is being imported: main() has not started
            os.kill(os.getpid(), signal.{sig})
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["streamconv", "convert", {source!r}, "-o", {out!r}]
from streamconv.__main__ import run
raise SystemExit(run())
"""


@pytest.mark.parametrize(("sig", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_a_signal_while_the_cli_is_imported_is_one_line(checkpoint: Path, tmp_path: Path, sig: str, code: int,
                                                         word: str) -> None:
    """Before main() runs, the entry point (``python -m streamconv``, the ``streamconv`` command) catches it."""
    out = tmp_path / "out"
    text = _INTERRUPTED_IMPORT.format(sig=sig, source=str(checkpoint), out=str(out))
    done = subprocess.run([sys.executable, "-c", text], env=ENV, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (code, f"error: {word}; nothing was written\n")
    assert not out.exists()


_SWALLOWED = """
import os, signal, sys, time
from streamconv.cli.interrupts import redeliver_swallowed, sigterm_raises

class SignalledWhileCollected:
    def __del__(self):  # Python cannot raise from here: it prints "Exception ignored" and goes on
        os.kill(os.getpid(), signal.{sig})

{install}
with sigterm_raises():
    try:
        SignalledWhileCollected()
        for _ in range(50):  # 10 times the redelivery delay, in steps: a sleep waits out an interrupt_main
            time.sleep(0.01)
        print("lost")
    except KeyboardInterrupt as exc:
        print("raised", type(exc).__name__)
"""


@pytest.mark.parametrize(("sig", "raised"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")])
def test_an_interrupt_python_swallows_comes_again(sig: str, raised: str) -> None:
    def run(install: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _SWALLOWED.format(sig=sig, install=install)],
                              env=ENV, capture_output=True, text=True, timeout=60)

    swallowed = run("")
    assert swallowed.stdout == "lost\n" and "Exception ignored" in swallowed.stderr  # what the hook is for
    again = run("redeliver_swallowed()")
    assert (again.stdout, again.stderr) == (f"raised {raised}\n", "")


def test_daemon_workers_answer_in_order_raise_and_stop_without_waiting() -> None:
    """The encoder's workers: results and errors come back through the answers; closed at once,
    they skip what is queued and are not waited for (a job still running is left to end)."""
    import threading

    from streamconv.workers import DaemonWorkers

    pool = DaemonWorkers(2, "test-workers")
    answers = [pool.submit(lambda x: x * x, i) for i in range(20)]
    assert [a.get() for a in answers] == [i * i for i in range(20)]
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda x: 1 // x, 0).get()
    pool.close(wait=True)

    release, ran = threading.Event(), []
    pool = DaemonWorkers(1, "test-workers")
    pool.submit(lambda _: release.wait(30), None)
    pool.submit(ran.append, "queued after the running job")
    pool.close(wait=False)  # returns with the first job still running
    assert all(t.daemon for t in pool._threads) and pool._threads[0].is_alive()
    release.set()
    pool._threads[0].join(30)
    assert ran == []


def test_daemon_workers_as_a_context_run_everything_or_skip_on_an_error() -> None:
    """Every pool is used as a context: a normal exit runs what is queued and joins the threads; a
    generator closed early (a reader's consumer that stops) skips the queued jobs."""
    import threading

    from streamconv.workers import DaemonWorkers

    ran: list[int] = []
    with DaemonWorkers(2, "test-workers") as pool:
        for i in range(50):
            pool.submit(ran.append, i)
    assert sorted(ran) == list(range(50)) and not any(t.is_alive() for t in pool._threads)

    release, skipped = threading.Event(), []

    def consumer():
        with DaemonWorkers(1, "test-workers") as inner:
            inner.submit(release.wait, 30)
            inner.submit(skipped.append, "queued")
            yield inner

    gen = consumer()
    inner = next(gen)
    gen.close()  # GeneratorExit inside the with: the queued job is skipped
    release.set()
    inner._threads[0].join(30)
    assert skipped == []
