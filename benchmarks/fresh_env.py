"""A fresh install's environment: what the whole-process figures of the benchmarks run in.

The `.venv` of `make setup` holds an editable streamconv beside torch, transformers and the test
tools, whose imports (and versions) differ from what `pip install streamconv` gives a user. So each
whole-process streamconv run of the benchmarks goes through the console script of a venv of its own,
made by ``python -m venv`` and ``pip install <this checkout>`` (not editable; runtime dependencies
only, the versions pip resolves today), with nothing of the checkout on ``PYTHONPATH``; so do the
in-process probes (benchmarks/probe.py). The naive path, validate and the safetensors reader need
torch or safetensors and stay in `.venv`.

The venv is kept in ``benchmarks/.work/fresh-venv`` and made again when pyproject.toml or setup.py
changes; streamconv alone is reinstalled when its sources change.

Alone: python benchmarks/fresh_env.py (makes or updates the venv, prints what it holds)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from make_checkpoints import DEFAULT_WORKDIR

ROOT = Path(__file__).resolve().parent.parent
VENV = DEFAULT_WORKDIR / "fresh-venv"
#: What decides the dependencies (the venv is made again when they change) and what is streamconv.
SETUP_FILES = ("pyproject.toml", "setup.py")
PACKAGES = ("numpy", "ml_dtypes", "pyarrow", "zstandard", "tqdm", "huggingface_hub", "xxhash", "torch", "transformers")
VERSIONS = """\
import importlib.metadata as m, json, platform, sys
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
def built(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True
kernels = [m for m in ("streamconv.stages._halfcast", "streamconv.format._dequant") if built(m)]
print(json.dumps({"python": platform.python_version(), "kernels": kernels,
                  **{name: version(name) for name in sys.argv[1:]}}))
"""


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def _sources() -> list[Path]:
    return [p for p in (ROOT / "streamconv").rglob("*") if p.suffix in (".py", ".c", ".pyi", ".typed")]


def _pip(*args: str) -> None:
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *args], check=True,
                   stdin=subprocess.DEVNULL)


def _base_python() -> str:
    """The interpreter `.venv` was made from: the fresh venv gets the same Python."""
    return getattr(sys, "_base_executable", None) or sys.executable


@functools.cache
def ensure() -> Path:
    """The fresh venv, made or brought up to date with this checkout; its path."""
    stamp = VENV / "streamconv-stamp.json"
    want = {"setup": _digest([ROOT / name for name in SETUP_FILES]), "sources": _digest(_sources())}
    have = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if have.get("setup") != want["setup"]:
        shutil.rmtree(VENV, ignore_errors=True)
        VENV.parent.mkdir(parents=True, exist_ok=True)
        print(f"==> making a fresh install's venv in {VENV} (pip install {ROOT}): a minute", file=sys.stderr)
        subprocess.run([_base_python(), "-m", "venv", str(VENV)], check=True)
        _pip("--upgrade", "pip")
        _pip(str(ROOT))
    elif have.get("sources") != want["sources"]:
        print(f"==> reinstalling streamconv from {ROOT} into {VENV}", file=sys.stderr)
        _pip("--no-deps", "--force-reinstall", str(ROOT))
    stamp.write_text(json.dumps(want))
    _drop_from_page_cache(VENV)
    return VENV


def _drop_from_page_cache(root: Path) -> None:
    """Evict the venv's files from the page cache, so its libraries are read back as an install's are.

    A file pip has just written sits in the page cache in large folios, and a fault in a mapping of
    it maps the whole folio: importing numpy and pyarrow from a venv made minutes ago measured
    97 MiB of RSS, the same files evicted and read back 60 MiB. Without this, every peak RSS of a
    run after the venv was (re)made would count ~35 MiB of library pages a user's install does not.
    """
    os.sync()  # dirty pages are not dropped
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def python() -> str:
    """The fresh venv's interpreter."""
    return str(ensure() / "bin" / "python")


def streamconv() -> list[str]:
    """The command that runs streamconv as a user of a fresh install does: its console script."""
    return [str(ensure() / "bin" / "streamconv")]


def environment(**extra: str) -> dict[str, str]:
    """This process's environment for a fresh-install child: nothing of the checkout on the path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "STREAMCONV_DISABLE_PROGRESS_BARS": "1", **extra}


@functools.cache
def versions() -> dict[str, object]:
    """Python's and each package's version in the fresh venv (``None``: not installed), and
    which optional compiled kernels were built."""
    done = subprocess.run([python(), "-c", VERSIONS, *PACKAGES], check=True, capture_output=True, text=True,
                          env=environment(), cwd="/")
    return json.loads(done.stdout)


def describe() -> str:
    """One sentence for a report: what the fresh install holds."""
    found = versions()
    held = ", ".join(f"{name} {found[name]}" for name in PACKAGES if found.get(name))
    absent = ", ".join(name for name in PACKAGES if not found.get(name))
    kernels = ", ".join(f"`{name.rsplit('.', 1)[1]}`" for name in found["kernels"]) or "none (numpy, Arrow fallbacks)"
    return (f"a fresh install (`pip install .` into its own venv, `benchmarks/fresh_env.py`): Python {found['python']}, "
            f"{held}; not installed: {absent or 'nothing'}; compiled kernels built: {kernels}")


if __name__ == "__main__":
    ensure()
    print(describe())
