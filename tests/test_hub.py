"""Converting straight from the hub (issue 19), against the loopback hub of tests/hubserver.py.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and its timeouts once, when imported; the ``hub``
fixture (tests/conftest.py) sets the environment and the constants it derived, so these tests run in
one process.
Nothing here reaches the internet: the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli import main
from streamconv.errors import CorruptCheckpointError, HubError
from tests.conftest import all_dtype_tensors, hub_checkpoint, write_raw_safetensors, write_safetensors, write_sharded
from tests.hubserver import HubServer

REPO = "tiny-org/tiny"


def _cache_weights(tmp_path: Path) -> list[Path]:
    """Weight files anywhere in the Hugging Face cache (blobs and snapshots)."""
    return [p for p in (tmp_path / "hf").rglob("*") if p.suffix == ".safetensors" or (p.is_file() and p.stat().st_size > 4096)]


def _cdn(server: HubServer) -> list:
    return [r for r in server.requests if r.origin == "cdn"]


def test_converts_by_range_reads_with_nothing_of_the_weights_on_disk(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    commit = hub.add_repo(REPO, tiny_checkpoint)
    result = streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(tmp_path / "out", names="source")
    for name, array in all_dtype_tensors().items():
        np.testing.assert_array_equal(loaded[name], array)
    assert _cache_weights(tmp_path) == []
    ranges = [r.range for r in _cdn(hub)]
    assert ranges[:2] == ["bytes=0-7", f"bytes=8-{7 + int.from_bytes((tiny_checkpoint / 'model.safetensors').read_bytes()[:8], 'little')}"]
    meta = streamconv.read_metadata(tmp_path / "out")
    assert meta["source"]["revision"] == commit
    assert meta["source"]["hub"] == {
        "repo": REPO, "revision": None, "commit": commit, "mode": "ranges",
        "bytes_fetched": (tiny_checkpoint / "model.safetensors").stat().st_size,
        "sha256_checked": ["model.safetensors"],
    }
    assert meta["source"]["files"] == [{"path": "model.safetensors", "bytes": (tiny_checkpoint / "model.safetensors").stat().st_size}]
    assert result.hub is not None and result.hub["mode"] == "ranges"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([*argv, "-q"])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, expected: int, *words: str) -> None:
    assert code == expected, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def _clip_shaped(folder: Path) -> Path:
    """A CLIPModel's names and layout (text tower before the vision tower, as save_pretrained sorts
    them), with random weights: what the clip plan reads, without building it through torch."""
    rng = np.random.default_rng(3)
    tensors: dict[str, np.ndarray] = {"logit_scale": np.array(2.6, dtype=np.float32)}
    for tower, first in (("text_model", "embeddings.token_embedding.weight"), ("vision_model", "embeddings.patch_embedding.weight")):
        tensors[f"{tower}.{first}"] = rng.standard_normal((256, 64)).astype(np.float32)
        for layer in range(2):
            for part in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.fc1.weight"):
                tensors[f"{tower}.encoder.layers.{layer}.{part}"] = rng.standard_normal((64, 64 * 4)).astype(np.float32)
        norm = "final_layer_norm" if tower == "text_model" else "post_layernorm"
        tensors[f"{tower}.{norm}.weight"] = np.ones(64, dtype=np.float32)
    tensors["text_projection.weight"] = rng.standard_normal((32, 64)).astype(np.float32)
    tensors["visual_projection.weight"] = rng.standard_normal((32, 64)).astype(np.float32)
    write_safetensors(folder / "model.safetensors", dict(sorted(tensors.items())))
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


def test_clip_vision_fetches_only_the_vision_tower(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo("org/clip", _clip_shaped(tmp_path / "clip"))
    result = streamconv.convert("org/clip", tmp_path / "out", parts=["vision"], dtype="keep")
    assert result.hub is not None
    assert result.source_bytes <= result.hub["bytes_fetched"] <= 1.1 * result.source_bytes
    assert result.hub["sha256_checked"] == []  # the text tower was never read
    names = list(streamconv.load(tmp_path / "out", names="source"))
    assert names and all(n.startswith(("vision_model.", "visual_projection")) for n in names)
    assert (tmp_path / "out" / "preprocessor_config.json").exists()


def test_sharded_bf16_checks_every_shard_and_reads_in_file_order(hub: HubServer, tmp_path: Path) -> None:
    import ml_dtypes

    rng = np.random.default_rng(2)
    shards = [{f"model.layers.{i}.w": rng.standard_normal((64, 96)).astype(ml_dtypes.bfloat16) for i in range(j, j + 2)}
              for j in (0, 2)]
    folder = write_sharded(tmp_path / "sharded", shards)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    hub.add_repo("org/sharded", folder)
    result = streamconv.convert("org/sharded", tmp_path / "out", dtype="keep")
    assert result.hub is not None
    assert result.hub["sha256_checked"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    loaded = streamconv.load(tmp_path / "out", names="source")
    for shard in shards:
        for name, array in shard.items():
            assert loaded[name].tobytes() == array.tobytes()
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in _cdn(hub) if "00001" in r.path and r.range]
    assert starts == sorted(starts)
    assert _cache_weights(tmp_path) == []


def test_revision_is_resolved_once_and_every_request_names_the_commit(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, tiny_checkpoint)
    other = tmp_path / "other"
    write_safetensors(other / "model.safetensors", {"only": np.arange(4, dtype=np.float32)})
    (other / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    commit = hub.add_repo(REPO, other, branch="v2")
    streamconv.convert(REPO, tmp_path / "out", revision="v2", dtype="keep")
    assert list(streamconv.load(tmp_path / "out")) == ["only"]
    hub_meta = streamconv.read_metadata(tmp_path / "out")["source"]["hub"]
    assert (hub_meta["revision"], hub_meta["commit"]) == ("v2", commit)
    resolves = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{commit}/" in p for p in resolves)
    assert all(f"/{commit}/" in r.path for r in _cdn(hub))


def test_bad_input_gets_one_line_and_leaves_nothing(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_repo(REPO, tiny_checkpoint)
    out = tmp_path / "out"
    _one_line_error(*_run(["convert", "tiny-org/missing", "-o", str(out)], capsys), 2, "no such repository", "HF_TOKEN")
    _one_line_error(*_run(["convert", REPO, "-o", str(out), "--revision", "nope"], capsys), 2, "no revision 'nope'")
    broken = tmp_path / "broken"
    write_raw_safetensors(broken / "model.safetensors" if broken.mkdir() is None else broken, {"x": {"dtype": "F32"}}, b"")
    (broken / "config.json").write_text("{}")
    hub.add_repo("org/unparsable", broken)
    _one_line_error(*_run(["convert", "org/unparsable", "-o", str(out)], capsys), 3, "model.safetensors", "data_offsets")
    hub.add_repo("org/truncated", {"config.json": b"{}", "model.safetensors": (1000).to_bytes(8, "little") + b'{"x":'})
    _one_line_error(*_run(["convert", "org/truncated", "-o", str(out)], capsys), 3, "runs past the end of the file")
    hub.add_repo("org/short", {"config.json": b"{}", "model.safetensors": b"\x01\x02"})
    _one_line_error(*_run(["convert", "org/short", "-o", str(out)], capsys), 3, "only 2 bytes")
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_gated_repo_needs_a_token_that_never_reaches_the_cdn(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/gated", tiny_checkpoint, gated=True)
    code, err = _run(["convert", "org/gated", "-o", str(tmp_path / "out")], capsys)
    _one_line_error(code, err, 2, "gated", "hf auth login", "HF_TOKEN")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("HF_TOKEN", hub.token)
    hub.requests.clear()
    assert _run(["convert", "org/gated", "-o", str(tmp_path / "out")], capsys)[0] == 0
    assert all(r.token for r in hub.requests if r.origin == "hub")
    assert _cdn(hub) and not any(r.token for r in _cdn(hub))


def test_dropped_transfers_resume_from_the_byte_where_they_stopped(hub: HubServer, tmp_path: Path) -> None:
    folder, tensors = hub_checkpoint(tmp_path / "big", 3)
    hub.add_repo(REPO, folder)
    hub.drop_after, hub.drops = 300_000, 2
    streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    loaded = streamconv.load(tmp_path / "out")
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in _cdn(hub) if r.range]
    # Each cut came after 300,000 bytes of an answer: a request starts again exactly there.
    assert hub.drops == 0 and sum(any(b - a == 300_000 for a in starts) for b in starts) == 2
    meta = streamconv.read_metadata(tmp_path / "out")["source"]["hub"]
    assert meta["sha256_checked"] == ["model.safetensors"]
    assert meta["bytes_fetched"] == (folder / "model.safetensors").stat().st_size


def test_a_server_that_ignores_range_is_read_correctly(hub: HubServer, tmp_path: Path) -> None:
    folder, tensors = hub_checkpoint(tmp_path / "big", 2)
    hub.add_repo(REPO, folder)
    hub.ignore_range = True
    streamconv.convert(REPO, tmp_path / "out", dtype="keep", exclude=["layer.0.*"])
    assert list(streamconv.load(tmp_path / "out")) == ["layer.1.weight"]
    np.testing.assert_array_equal(streamconv.load(tmp_path / "out")["layer.1.weight"], tensors["layer.1.weight"])


@pytest.mark.parametrize(("change", "said"), [("grows", "is now"), ("same size, other bytes", "its ETag went from")])
def test_a_file_that_changes_during_the_run_is_refused(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, said: str
) -> None:
    folder, _ = hub_checkpoint(tmp_path / "big", 2)
    hub.add_repo(REPO, folder)
    weights = (folder / "model.safetensors").read_bytes()
    changed = weights + b"\0" * 8 if change == "grows" else weights[:-1] + bytes([weights[-1] ^ 1])

    def push(request: object) -> None:
        if len(_cdn(hub)) == 3:  # after the header's two reads
            hub.mutate(REPO, "model.safetensors", changed)

    hub.hook = push
    code, err = _run(["convert", REPO, "-o", str(tmp_path / "out")], capsys)
    _one_line_error(code, err, 7, "model.safetensors", "changed on the hub during the run", said)
    assert not list(tmp_path.glob("out*"))


def test_bytes_that_do_not_match_the_listed_sha256_are_refused(hub: HubServer, tmp_path: Path) -> None:
    folder, _ = hub_checkpoint(tmp_path / "big", 1)
    hub.add_repo(REPO, folder)
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF

    def damage(request: object) -> None:
        if len(_cdn(hub)) == 1:  # same size, other bytes: only the sha256 can tell
            hub.mutate(REPO, "model.safetensors", bytes(weights))

    hub.hook = damage
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        streamconv.convert(REPO, tmp_path / "out", dtype="keep")
    assert not list(tmp_path.glob("out*"))


def test_a_connection_that_never_comes_back(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = hub_checkpoint(tmp_path / "big", 2)
    hub.add_repo(REPO, folder)

    def cut(request: object) -> None:
        if len(_cdn(hub)) == 3:
            hub.down = True

    hub.hook = cut
    code, err = _run(["convert", REPO, "-o", str(tmp_path / "out")], capsys)
    _one_line_error(code, err, 7, "model.safetensors", "failed 6 times in a row")
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(HubError) as caught:
        streamconv.convert(REPO, tmp_path / "out2")
    assert isinstance(caught.value, ConnectionError) and caught.value.exit_code == 7


def test_download_fills_the_cache_and_a_cached_snapshot_is_read_locally(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, tiny_checkpoint)
    first = streamconv.convert(REPO, tmp_path / "a", download=True, dtype="keep")
    assert first.hub is not None and first.hub["mode"] == "download" and _cache_weights(tmp_path)
    hub.requests.clear()
    second = streamconv.convert(REPO, tmp_path / "b", dtype="keep")
    assert second.hub is not None and second.hub["mode"] == "cache" and _cdn(hub) == []


def test_progress_shows_the_bytes_fetched_and_the_rate(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = hub_checkpoint(tmp_path / "big", 2)
    hub.add_repo(REPO, folder)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    notes: list[str] = []

    class Bar:
        def __init__(self, **kwargs: object) -> None:
            pass

        def update(self, n: float) -> None:
            pass

        def set_postfix_str(self, text: str, refresh: bool = True) -> None:
            notes.append(text)

        def close(self) -> None:
            pass

    streamconv.convert(REPO, tmp_path / "out", progress=True, tqdm_class=Bar)
    assert notes and notes[-1].startswith("fetched ") and notes[-1].endswith("/s")


def test_the_summary_says_what_was_fetched(
    hub: HubServer, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_repo(REPO, tiny_checkpoint)
    assert main(["convert", REPO, "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "fetched by range reads" in out and "nothing of the weights written to disk" in out
    assert "sha256 checked: model.safetensors" in out


def test_hf_endpoint_alone_in_a_fresh_process(hub: HubServer, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """No monkeypatching: huggingface_hub reads HF_ENDPOINT and HF_HOME when imported."""
    hub.add_repo(REPO, tiny_checkpoint)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "fresh"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-m", "streamconv", "convert", REPO, "-o", str(tmp_path / "out"), "-q"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert streamconv.read_metadata(tmp_path / "out")["source"]["hub"]["mode"] == "ranges"
    assert not [p for p in (tmp_path / "fresh").rglob("*.safetensors")]


def test_bin_shards_are_fetched_one_at_a_time_and_deleted(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tempfile

    torch = pytest.importorskip("torch")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-test"}))
    generator = torch.Generator().manual_seed(0)
    shards = [{f"layer.{i}.weight": torch.randn(32, 48, generator=generator) for i in range(j, j + 2)} for j in (0, 2, 4)]
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        torch.save(part, folder / f"pytorch_model-{i:05d}-of-00003.bin")
        weight_map.update({k: f"pytorch_model-{i:05d}-of-00003.bin" for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    hub.add_repo("org/bin", folder)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    held: list[int] = []
    from streamconv.sources import hub as hub_source

    real = hub_source.FetchedShards.local

    def local(self: hub_source.FetchedShards, path: Path) -> Path:
        copy = real(self, path)
        held.append(len([p for p in scratch.rglob("*.bin")]))
        return copy

    monkeypatch.setattr(hub_source.FetchedShards, "local", local)
    assert main(["convert", "org/bin", "-o", str(tmp_path / "out"), "--dtype", "keep"]) == 0
    assert "one shard at a time into a temporary folder, converted, then deleted" in capsys.readouterr().out
    loaded = streamconv.load(tmp_path / "out", names="source")
    for part in shards:
        for name, tensor in part.items():
            np.testing.assert_array_equal(loaded[name], tensor.numpy())
    meta = streamconv.read_metadata(tmp_path / "out")["source"]["hub"]
    assert meta["mode"] == "shards" and meta["sha256_checked"] == sorted(set(weight_map.values()))
    assert max(held) <= 2 and list(scratch.iterdir()) == []  # two shards at most, none left
    assert not [p for p in (tmp_path / "hf").rglob("*.bin")]
