"""Hostile safetensors headers and shard indexes (issue 8, item 4: "refuse what safetensors refuses").

The installed safetensors library is the oracle: ``safetensors.deserialize`` (the Rust
``SafeTensors::deserialize`` that ``load_file`` and ``safe_open`` run) decides what is a valid
file and returns each tensor's bytes, and numpy decides which shapes ``load_file`` can build.
streamconv must accept exactly those files, read the same bytes, and refuse everything else with
its own one-line errors. The one deliberate difference: streamconv refuses a key given twice in a
JSON object, where the library silently keeps the last.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from safetensors.numpy import load_file

from streamconv.cli.app import main
from streamconv.dtypes import CODES as STORED_CODES
from streamconv.errors import (
    CorruptCheckpointError,
    ShardIndexError,
    UnsafeInputError,
    UnsupportedDtypeError,
)
from streamconv.sources.checkpoint import open_checkpoint, read_safetensors_header
from streamconv.sources.safetensors_header import DTYPE_BITS
from tests.conftest import fuzz_cases, write_safetensors, write_sharded

FUZZ = settings(
    max_examples=fuzz_cases(100),
    deadline=None,
    derandomize=True,  # the same examples on every run and every machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Refusals streamconv makes where the library accepts (see streamconv/header.py).
STRICTER = ("duplicate key",)


# --- building JSON text that json.dumps cannot write: duplicate keys, raw tokens ---


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: ``1e400``, ``NaN``, ``-0``, ``"\\ud800"``..."""

    text: str


class Obj(list):  # type: ignore[type-arg]
    """A JSON object as a list of ``[key, value]`` pairs, so keys may repeat."""

    def get(self, key: str) -> Any:
        return next((v for k, v in self if k == key), None)

    def set(self, key: str, value: Any) -> None:
        for pair in self:
            if pair[0] == key:
                pair[1] = value


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dump, value)) + "]"
    return json.dumps(value)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def pack(header: bytes, data: bytes, header_len: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if header_len is None else header_len) + header + data


# --- the oracle and the comparison ---


def library_view(blob: bytes) -> dict[str, tuple[str, tuple[int, ...], bytes]] | str:
    """What safetensors (and numpy, for ``load_file``) make of a file: tensors, or why refused."""
    try:
        flat = safetensors.deserialize(blob)
    except BaseException as exc:  # the oracle's own errors (SafetensorError, a Rust panic)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return f"refused: {exc}"
    tensors = {}
    for name, info in flat:
        try:  # load_file builds the array: numpy refuses shapes it cannot hold, even empty ones
            np.empty(info["shape"], dtype=f"V{max(1, DTYPE_BITS[info['dtype']] // 8)}")
        except (ValueError, OverflowError) as exc:
            return f"refused by numpy: {exc}"
        tensors[name] = (info["dtype"], tuple(info["shape"]), bytes(info["data"]))
    return tensors


def assert_same_as_library(path: Path, blob: bytes) -> None:
    """streamconv accepts ``blob`` iff the library does, reads the same bytes, or fails its own way."""
    path.write_bytes(blob)
    expected = library_view(blob)
    try:
        refs = read_safetensors_header(path)
    except CorruptCheckpointError as exc:
        assert "\n" not in str(exc), str(exc)
        if isinstance(expected, dict):
            assert any(s in exc.problem for s in STRICTER), f"library accepts, streamconv refused: {exc}"
        _event("refused (stricter than the library)" if isinstance(expected, dict) else "refused by both")
        return
    assert not isinstance(expected, str), f"streamconv accepted what the library refuses: {expected}"
    _event("accepted by both")
    assert sorted(r.source_name for r in refs) == sorted(expected)
    for ref in refs:
        dtype, shape, data = expected[ref.source_name]
        assert (ref.dtype_code, ref.shape, ref.nbytes) == (dtype, shape, len(data))
        if ref.dtype_code in STORED_CODES:
            assert ref.read().tobytes() == data
        else:
            with pytest.raises(UnsupportedDtypeError):
                ref.read()
            assert blob[ref.offset : ref.offset + ref.nbytes] == data


def _event(outcome: str) -> None:
    if currently_in_test_context():  # shown by pytest --hypothesis-show-statistics
        event(outcome)


def assert_library_refuses(blob: bytes) -> None:
    assert isinstance(library_view(blob), str)


# --- valid files, then mutations of them ---

SUPPORTED = sorted(STORED_CODES)
ALL_CODES = list(DTYPE_BITS)
WEIRD = [
    Raw("1e400"), Raw("-1e400"), Raw("-0"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("2.0"),
    Raw("2.9"), Raw("1E2"), Raw("9" * 400), Raw("9" * 30), Raw('"\\ud800"'), Raw('"\\ud83d\\ude00"'),
    2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, True, False, None, "2", "2,2", [2], [], Obj(),
]  # fmt: skip
WEIRD_DTYPES = [
    "f32", "X", "", ["F32"], Obj([["F32", None]]), Obj([["F32", 1]]), Obj([["BF16", None]]),
    Obj([["F32", None], ["F16", None]]), Obj([["F32", []]]), None, 5,
]  # fmt: skip
WHITESPACE = [" ", "\t", "\n", "\r", "\x00", "\x0c", "\x0b", "\u00a0", "\u2028", "\ufeff"]

# Strategies are built once: building them inside a test costs more than the test itself.
weird_numbers = st.one_of(st.integers(-2, 80), st.sampled_from(WEIRD), st.floats(width=32, allow_nan=False))
weird_dims = weird_numbers | st.sampled_from([0, 1, 2, 2**31, 2**61])
INDEX = st.integers(0, 63)
COIN = st.booleans()
NAMES = st.lists(st.text(max_size=5), max_size=4, unique=True)
CODES = st.sampled_from(SUPPORTED) | st.sampled_from(ALL_CODES)
SHAPES = st.lists(st.integers(0, 3), max_size=3)
METADATA = st.none() | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
SEEDS = st.integers(0, 2**32 - 1)
KINDS = st.sampled_from([
    "offset", "shift", "dim", "shape", "dtype", "dup-tensor", "dup-field", "metadata", "extra",
    "array-form", "drop-field", "entry", "surrogate-name", "top-level",
])  # fmt: skip
ODD_SHAPES = st.sampled_from(["2,2", None, 4, Obj([["0", 2]]), [[2]], Raw("[2 ,2]")])
DTYPES = st.sampled_from(ALL_CODES + WEIRD_DTYPES)
ODD_METADATA = st.sampled_from([
    None, Obj(), Obj([["k", "v"]]), Obj([["k", 1]]), Obj([["k", "v"], ["k", "w"]]), [], "x",
    Obj([["k", Obj()]]), Obj([["k", None]]), [["k", "v"]],
])  # fmt: skip
EXTRA_VALUES = st.sampled_from(WEIRD) | st.integers(120, 130).map(lambda d: Raw(nested(d)))
EXTRA_KEYS = st.sampled_from(["x", "dtypes", ""])
SURROGATE_KEYS = st.sampled_from([Raw('"\\ud800"'), Raw('"a\\udfff"'), Raw('"\\ud83d\\ude00"')])
DEEP = st.sampled_from([126, 127, 2000])
ANY_WEIRD = st.sampled_from(WEIRD)
SHIFTS = st.integers(-8, 8)
PREFIXES = st.lists(st.sampled_from(WHITESPACE), max_size=2)
SUFFIXES = st.lists(st.sampled_from(WHITESPACE[:4]) | st.sampled_from(WHITESPACE), max_size=9)
ENCODINGS = st.sampled_from(["utf-8"] * 12 + ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
TAILS = st.sampled_from([0] * 10 + [-1, 1, 3])
LENGTH_DELTAS = st.sampled_from([0] * 12 + [-1, 1, None])


def pick(data: st.DataObject, items: list[Any]) -> Any:
    return items[data.draw(INDEX) % len(items)]


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[Obj, bytes]:
    """A header (as an :class:`Obj`) and data the library accepts, in shuffled key order."""
    rng = np.random.default_rng(draw(SEEDS))
    entries, offset = [], 0
    for name in draw(NAMES):
        code, shape = draw(CODES), draw(SHAPES)
        if int(np.prod(shape)) * DTYPE_BITS[code] % 8:
            shape = [*shape, 2] if code == "F4" else [*shape, 4]
        nbytes = int(np.prod(shape)) * DTYPE_BITS[code] // 8
        fields = [["dtype", code], ["shape", shape], ["data_offsets", [offset, offset + nbytes]]]
        entries.append([name, Obj(fields[i] for i in rng.permutation(3))])
        offset += nbytes
    metadata = draw(METADATA)
    if metadata is not None:
        entries.append(["__metadata__", Obj([list(kv) for kv in metadata.items()])])
    return Obj(entries[i] for i in rng.permutation(len(entries))), rng.bytes(offset)


def _tensor_entries(header: Obj) -> list[list[Any]]:
    return [pair for pair in header if pair[0] != "__metadata__" and isinstance(pair[1], Obj)]


def mutate_json(data: st.DataObject, header: Obj) -> None:
    """One JSON-level mutation: offsets, shapes, dtypes, duplicates, odd types, nesting..."""
    entries = _tensor_entries(header)
    kind = data.draw(KINDS)
    if kind in {"offset", "shift", "dim", "shape", "dtype", "dup-field", "extra", "array-form", "drop-field"}:
        if not entries:
            kind = "metadata"
        else:
            entry: Obj = pick(data, entries)[1]
    if kind == "offset":
        offsets = (list(entry.get("data_offsets") or []) + [0, 0])[:2]
        offsets[data.draw(COIN)] = data.draw(weird_numbers)
        entry.set("data_offsets", offsets)
    elif kind == "shift":
        delta = data.draw(SHIFTS)
        offsets = entry.get("data_offsets")
        if isinstance(offsets, list):
            entry.set("data_offsets", [v + delta if type(v) is int else v for v in offsets])
    elif kind == "dim":
        shape = entry.get("shape")
        shape = list(shape) if isinstance(shape, list) else []
        at = data.draw(INDEX) % (len(shape) + 1)
        if at < len(shape) and data.draw(COIN):
            shape[at] = data.draw(weird_dims)
        elif data.draw(COIN):
            shape.insert(at, data.draw(weird_dims))
        elif shape:
            del shape[at - 1]
        entry.set("shape", shape)
    elif kind == "shape":
        entry.set("shape", data.draw(ODD_SHAPES))
    elif kind == "dtype":
        entry.set("dtype", data.draw(DTYPES))
    elif kind == "dup-tensor":
        source = pick(data, header) if header else ["a", Obj()]
        header.insert(data.draw(INDEX) % (len(header) + 1), [source[0], source[1]])
    elif kind == "dup-field":
        field = pick(data, entry) if entry else ["dtype", "F32"]
        entry.append([field[0], field[1]])
    elif kind == "metadata":
        header.insert(data.draw(INDEX) % (len(header) + 1), ["__metadata__", data.draw(ODD_METADATA)])
    elif kind == "extra":
        entry.insert(data.draw(INDEX) % (len(entry) + 1), [data.draw(EXTRA_KEYS), data.draw(EXTRA_VALUES)])
    elif kind == "array-form":
        items = [entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")]
        items = items[: 1 + data.draw(INDEX) % 3] + [0] * data.draw(COIN)
        next(p for p in header if p[1] is entry)[1] = items
    elif kind == "drop-field" and entry:
        del entry[data.draw(INDEX) % len(entry)]
    elif kind == "entry" and header:
        pick(data, header)[1] = data.draw(ANY_WEIRD)
    elif kind == "surrogate-name" and header:
        pick(data, header)[0] = data.draw(SURROGATE_KEYS)
    elif kind == "top-level":
        header[:] = [["", data.draw(ANY_WEIRD)]] if data.draw(COIN) else []
        if data.draw(COIN):
            header.append([Raw('"x"'), Raw(nested(data.draw(DEEP)))])


def encode(data: st.DataObject, header: Obj, body: bytes) -> bytes:
    """The header's text, encoded and padded (sometimes oddly), then the data (sometimes cut or extended)."""
    text = dump(header)
    if data.draw(INDEX) % 4 == 0:
        text = "".join(data.draw(PREFIXES)) + text
    text += "".join(data.draw(SUFFIXES))
    raw = text.encode(data.draw(ENCODINGS), "surrogatepass")
    tail = data.draw(TAILS)
    body = body[:tail] if tail < 0 else body + b"\xaa" * tail
    delta = data.draw(LENGTH_DELTAS)
    return pack(raw, body, 2**64 - 1 if delta is None else len(raw) + delta)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "case.safetensors"


@settings(FUZZ, max_examples=fuzz_cases(150))
@given(valid_files())
def test_valid_headers_read_bit_identically(scratch: Path, case: tuple[Obj, bytes]) -> None:
    header, body = case
    blob = pack(dump(header).encode(), body)
    assert isinstance(library_view(blob), dict)
    assert_same_as_library(scratch, blob)


@settings(FUZZ, max_examples=fuzz_cases(500))
@given(valid_files(), st.data())
def test_mutated_headers_match_the_library(scratch: Path, case: tuple[Obj, bytes], data: st.DataObject) -> None:
    header, body = case
    for _ in range(data.draw(st.integers(1, 3))):
        mutate_json(data, header)
    assert_same_as_library(scratch, encode(data, header, body))


@settings(FUZZ, max_examples=fuzz_cases(250))
@given(valid_files(), st.lists(st.tuples(st.integers(0, 2**16), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_match_the_library(scratch: Path, case: tuple[Obj, bytes], flips: list[tuple[int, int]]) -> None:
    header, body = case
    blob = bytearray(pack(dump(header).encode(), body))
    for at, mask in flips:
        blob[at % len(blob)] ^= mask
    assert_same_as_library(scratch, bytes(blob))


# --- shard indexes ---

SHARD_1, SHARD_2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards and an index, plus traps: a file outside, a symlink to it, a symlink loop."""
    base = tmp_path_factory.mktemp("index")
    folder = write_sharded(
        base / "ckpt", [{"a": np.ones(2, np.float32), "b": np.ones(1, np.int8)}, {"c": np.zeros(3, np.float16)}]
    )
    write_safetensors(folder / "sub" / "inner.safetensors", {"d": np.ones(1, np.float32)})
    write_safetensors(base / "outside.safetensors", {"e": np.ones(1, np.float32)})
    (folder / "escape.safetensors").symlink_to(base / "outside.safetensors")
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    return folder


SHARD_NAMES = [
    SHARD_1, SHARD_2, "sub/inner.safetensors", "./" + SHARD_1, "sub//inner.safetensors", "../outside.safetensors",
    "sub/../" + SHARD_1, "escape.safetensors", "loop.safetensors", "", ".", "sub", "/", "a\x00b", "..\\x",
    "x" * 300, "missing.safetensors", "model.safetensors.index.json", "\n", "é.safetensors",
]  # fmt: skip


INDEX_KINDS = st.sampled_from(["value", "weird", "add", "dup", "drop"])
INDEX_ENCODINGS = st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16"])


@settings(FUZZ, max_examples=fuzz_cases(250))
@given(st.data())
def test_mutated_indexes_raise_only_project_errors(sharded: Path, data: st.DataObject) -> None:
    names = [*SHARD_NAMES, str(sharded.parent / "outside.safetensors")]
    weight_map = Obj([["a", SHARD_1], ["b", SHARD_1], ["c", SHARD_2]])
    for _ in range(data.draw(INDEX) % 4):
        kind = data.draw(INDEX_KINDS)
        if kind == "value" and weight_map:
            pick(data, weight_map)[1] = pick(data, names)
        elif kind == "weird" and weight_map:
            pick(data, weight_map)[1] = data.draw(ANY_WEIRD)
        elif kind == "add":
            weight_map.append([pick(data, list("abcdez")), pick(data, names)])
        elif kind == "dup" and weight_map:
            weight_map.append(list(pick(data, weight_map)))
        elif kind == "drop" and weight_map:
            del weight_map[data.draw(INDEX) % len(weight_map)]
    index = pick(data, [
        Obj([["metadata", Obj([["total_size", 14]])], ["weight_map", weight_map]])] * 6 + [
        Obj([["weight_map", weight_map], ["weight_map", weight_map]]), Obj([["weight_map", [SHARD_1]]]),
        Obj([["weight_map", None]]), Obj(), [weight_map], Obj([["metadata", Raw(nested(3000))], ["weight_map", weight_map]]),
        Obj([["metadata", Raw("NaN")], ["weight_map", weight_map]]),
    ])  # fmt: skip
    raw = bytearray(dump(index).encode(data.draw(INDEX_ENCODINGS), "surrogatepass"))
    if data.draw(INDEX) % 6 == 0:
        raw[data.draw(SEEDS) % len(raw)] ^= 1 + data.draw(SEEDS) % 255
    (sharded / "model.safetensors.index.json").write_bytes(bytes(raw))
    try:
        checkpoint = open_checkpoint(sharded)
    except (ShardIndexError, CorruptCheckpointError, UnsafeInputError) as exc:
        assert "\n" not in str(exc), str(exc)
        _event(f"refused: {type(exc).__name__}")
        return
    _event("accepted")
    home = sharded.resolve()
    assert all(p.resolve().is_relative_to(home) for p in checkpoint.weight_files)
    assert {t.source_name for t in checkpoint.tensors} == {k for k, _ in weight_map}


# --- every case of the issue, by name ---

ENTRY = '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
DATA = np.array([1.5, -2.0], np.float32).tobytes()


def refused(path: Path, blob: bytes, fragment: str, *, library_too: bool = True) -> CorruptCheckpointError:
    """Write ``blob``, check streamconv refuses it naming ``fragment``, and that the library refuses it."""
    path.write_bytes(blob)
    with pytest.raises(CorruptCheckpointError) as caught:
        read_safetensors_header(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and "re-download or re-save it" in message, message
    if library_too:
        assert_library_refuses(blob)
    return caught.value


def header_file(text: str, data: bytes = DATA) -> bytes:
    return pack(text.encode("utf-8", "surrogatepass"), data)


def test_a_plain_file_and_its_padding_are_accepted(tmp_path: Path) -> None:
    for pad in ("", "    ", " \t\r\n"):
        blob = header_file("{" + ENTRY + "}" + pad)
        assert_same_as_library(tmp_path / "ok.safetensors", blob)
        assert read_safetensors_header(tmp_path / "ok.safetensors")[0].read().tolist() == [1.5, -2.0]


@pytest.mark.parametrize("pad", ["\x00", "\x0c", "\x0b", "\u00a0"])
def test_padding_other_than_json_whitespace_is_refused(tmp_path: Path, pad: str) -> None:
    refused(tmp_path / "m.safetensors", header_file("{" + ENTRY + "}" + pad), "header is not JSON")


def test_trailing_bytes_after_the_data(tmp_path: Path) -> None:
    refused(tmp_path / "m.safetensors", header_file("{" + ENTRY + "}", DATA + b"\0"), "1 trailing bytes")


def test_utf8_bom(tmp_path: Path) -> None:
    refused(tmp_path / "m.safetensors", header_file("\ufeff{" + ENTRY + "}"), "byte-order mark")


@pytest.mark.parametrize(("encoding", "fragment"), [("utf-16", "byte-order mark"), ("utf-16-le", "header is not JSON")])
def test_utf16_header(tmp_path: Path, encoding: str, fragment: str) -> None:
    blob = pack(("{" + ENTRY + "}").encode(encoding), DATA)
    refused(tmp_path / "m.safetensors", blob, fragment)


def test_overlapping_offsets(tmp_path: Path) -> None:
    text = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "overlap the previous tensor, which ends at byte 4")


def test_gap_between_tensors(tmp_path: Path) -> None:
    text = '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "leave a gap after byte 1")


def test_shifted_offsets(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "data offsets [4, 8] of tensor 'w' leave a gap after byte 0")


def test_offsets_that_end_before_they_begin(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"v":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "data offsets [8, 0] of tensor 'v' end before they begin")


def test_duplicate_tensor_key(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},' + ENTRY + "}"
    # The library keeps the last 'w' silently; streamconv refuses to guess.
    refused(tmp_path / "m.safetensors", header_file(text), "duplicate key 'w'", library_too=False)
    assert isinstance(library_view(header_file(text)), dict)


@pytest.mark.parametrize("where", ["field", "metadata"])
def test_duplicate_field_or_metadata(tmp_path: Path, where: str) -> None:
    text = (
        '{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}' if where == "field"
        else '{"__metadata__":{},"__metadata__":{},' + ENTRY + "}"
    )  # fmt: skip
    refused(tmp_path / "m.safetensors", header_file(text), "duplicate key")


def test_float_dimension(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"U8","shape":[2.9,2],"data_offsets":[0,4]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b"1234"), "has shape '[2.9, 2]', not an array of integers")


def test_minus_zero_dimension(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "has shape '[-0.0]'")


def test_string_shape(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "has shape '2', not an array of integers")


def test_bool_dimension(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[true, 2],"data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "has shape '[True, 2]'")


@pytest.mark.parametrize("metadata", ['["a"]', '"text"', '{"k":1}', '{"k":{"a":"b"}}'])
def test_non_object_metadata(tmp_path: Path, metadata: str) -> None:
    text = '{"__metadata__":' + metadata + "," + ENTRY + "}"
    refused(tmp_path / "m.safetensors", header_file(text), "__metadata__ is not an object of string to string")


def test_null_metadata_is_accepted_as_the_library_does(tmp_path: Path) -> None:
    assert_same_as_library(tmp_path / "m.safetensors", header_file('{"__metadata__":null,' + ENTRY + "}"))
    assert len(read_safetensors_header(tmp_path / "m.safetensors")) == 1


def test_huge_shape_next_to_a_zero(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[0,' + str(2**62) + ',4],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "too large for numpy and for streamconv's int64 shapes")
    with pytest.raises(ValueError, match="array is too big"):  # load_file fails too, building the array
        load_file(tmp_path / "m.safetensors")


def test_huge_shape_whose_element_count_overflows(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[' + str(2**62) + ',4,0],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "element count overflows 64 bits")


def test_huge_shape_whose_size_in_bits_overflows(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"U8","shape":[' + str(2**63) + '],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "size in bits overflows 64 bits")


def test_shape_that_does_not_match_the_byte_range(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "needs 12 bytes but its data range holds 8")


def test_sub_byte_dtype_ending_inside_a_byte(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b"\0"), "ends inside a byte (12 bits)")


def test_deeply_nested_json(tmp_path: Path) -> None:
    # Deep enough for Python's json to raise RecursionError, which must not escape.
    text = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + nested(100_000) + "}}"
    refused(tmp_path / "m.safetensors", header_file(text), "nested more than 127 levels deep")


@pytest.mark.parametrize(("depth", "accepted"), [(125, True), (126, False)])
def test_nesting_limit_is_the_library_s(tmp_path: Path, depth: int, accepted: bool) -> None:
    # Two levels for the header and the entry: 127 levels in all parse, 128 do not (serde_json).
    text = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + nested(depth) + "}}"
    if accepted:
        assert_same_as_library(tmp_path / "m.safetensors", header_file(text))
        assert read_safetensors_header(tmp_path / "m.safetensors")
    else:
        refused(tmp_path / "m.safetensors", header_file(text), "nested more than 127 levels deep")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "9" * 400])
def test_number_beyond_a_float(tmp_path: Path, number: str) -> None:
    text = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + number + "}}"
    refused(tmp_path / "m.safetensors", header_file(text), "is out of range")


def test_1e400_as_a_dimension(tmp_path: Path) -> None:
    refused(tmp_path / "m.safetensors", header_file('{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,8]}}'), "number 1e400 is out of range")


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_infinity_and_nan(tmp_path: Path, constant: str) -> None:
    text = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,' + constant + "]}}"
    refused(tmp_path / "m.safetensors", header_file(text), f"{constant} is not a JSON number")


def test_2_pow_63_offset(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,' + str(2**63) + ']}}'
    refused(tmp_path / "m.safetensors", header_file(text), "lie outside the file's 8-byte data section")


def test_2_pow_63_dimension(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[0,' + str(2**63) + '],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "too large for numpy")


def test_2_pow_64_dimension(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"F32","shape":[0,' + str(2**64) + '],"data_offsets":[0,0]}}'
    refused(tmp_path / "m.safetensors", header_file(text, b""), "not an array of integers from 0 to 2**64-1")


def test_list_dtype(tmp_path: Path) -> None:
    text = '{"w":{"dtype":["F32"],"shape":[2],"data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "has dtype \"['F32']\", not a safetensors dtype code")


def test_unknown_dtype(tmp_path: Path) -> None:
    text = '{"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "has dtype 'f32', not a safetensors dtype code")


def test_lone_surrogate_in_a_name(tmp_path: Path) -> None:
    text = '{"w\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    refused(tmp_path / "m.safetensors", header_file(text), "lone UTF-16 surrogate")


def test_surrogate_pair_in_a_name_is_accepted(tmp_path: Path) -> None:
    blob = header_file('{"w\\ud83d\\ude00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')
    assert_same_as_library(tmp_path / "m.safetensors", blob)
    assert read_safetensors_header(tmp_path / "m.safetensors")[0].name == "w\U0001f600"


def test_forms_serde_also_reads_are_accepted(tmp_path: Path) -> None:
    """Surprising but true of the library: an entry as an array, a dtype as {"F32": null}."""
    for text in ('{"w":["F32",[2],[0,8]]}', '{"w":{"dtype":{"F32":null},"shape":[2],"data_offsets":[0,8],"extra":1}}'):
        assert_same_as_library(tmp_path / "m.safetensors", header_file(text))
        assert read_safetensors_header(tmp_path / "m.safetensors")[0].read().tolist() == [1.5, -2.0]


def test_header_length_over_the_limit(tmp_path: Path) -> None:
    refused(tmp_path / "m.safetensors", pack(b"{}", b"", header_len=100_000_001), "over the 100000000-byte limit")


def test_known_dtypes_streamconv_cannot_store_still_parse_and_can_be_excluded(tmp_path: Path) -> None:
    text = (
        '{"f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},'
        '"u32":{"dtype":"U32","shape":[1],"data_offsets":[2,6]},'
        '"w":{"dtype":"F32","shape":[2],"data_offsets":[6,14]}}'
    )
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(header_file(text, b"\1\2" + b"\0\0\0\1" + DATA))
    refs = {r.name: r for r in read_safetensors_header(folder / "model.safetensors")}
    with pytest.raises(UnsupportedDtypeError, match="'f8' \\(F8_E4M3\\)"):
        refs["f8"].read()
    assert main(["convert", str(folder), "-o", str(tmp_path / "out"), "--exclude", "f8", "--exclude", "u32"]) == 0


# --- shard indexes, by name ---


def _index(folder: Path, weight_map: Any) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def index_refused(folder: Path, fragment: str) -> None:
    with pytest.raises(ShardIndexError) as caught:
        open_checkpoint(folder)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and "re-download the checkpoint" in message, message


@pytest.fixture
def two_shards(tmp_path: Path) -> Path:
    write_safetensors(tmp_path / "outside.safetensors", {"a": np.ones(2, np.float32)})
    return write_sharded(tmp_path / "ckpt", [{"a": np.ones(2, np.float32)}, {"b": np.zeros(1, np.float32)}])


def path_refused(folder: Path, fragment: str) -> None:
    """A path from the index is refused by the one owner of paths from data (streamconv._files): exit 3."""
    with pytest.raises(UnsafeInputError) as caught:
        open_checkpoint(folder)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and caught.value.exit_code == 3, message


def test_dotdot_shard(two_shards: Path) -> None:
    _index(two_shards, {"a": "../outside.safetensors", "b": SHARD_2})
    path_refused(two_shards, "names '../outside.safetensors', which is not a plain relative path")


def test_absolute_shard(two_shards: Path) -> None:
    outside = str(two_shards.parent / "outside.safetensors")
    _index(two_shards, {"a": outside, "b": SHARD_2})
    path_refused(two_shards, f"names {outside!r}, which is not a plain relative path")


def test_symlink_escaping_the_folder(two_shards: Path) -> None:
    (two_shards / "link.safetensors").symlink_to(two_shards.parent / "outside.safetensors")
    _index(two_shards, {"a": "link.safetensors", "b": SHARD_2})
    path_refused(two_shards, "link.safetensors: leads through a symlink to")


def test_symlinks_inside_the_folder_and_into_hub_blobs_are_followed(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--tiny"
    source = write_sharded(tmp_path / "src", [{"a": np.ones(2, np.float32)}, {"b": np.zeros(1, np.float32)}])
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(os.path.relpath(repo / "blobs" / file.name, snapshot))
    checkpoint = open_checkpoint(snapshot)
    assert [t.name for t in checkpoint.tensors] == ["a", "b"]
    assert checkpoint.tensors[0].read().tolist() == [1.0, 1.0]


@pytest.mark.parametrize(("value", "fragment"), [(5, "maps to a number"), (None, "maps to null"), ([SHARD_1], "maps to an array")])
def test_non_string_weight_map_value(two_shards: Path, value: Any, fragment: str) -> None:
    _index(two_shards, {"a": value, "b": SHARD_2})
    index_refused(two_shards, f"tensor 'a' {fragment}, not to a shard file name")


@pytest.mark.parametrize("weight_map", [[SHARD_1], "x", None])
def test_weight_map_not_an_object(two_shards: Path, weight_map: Any) -> None:
    _index(two_shards, weight_map)
    index_refused(two_shards, "index has no usable weight_map")


def test_duplicate_key_in_the_index(two_shards: Path) -> None:
    text = f'{{"weight_map": {{"a": "{SHARD_1}", "a": "{SHARD_2}", "b": "{SHARD_2}"}}}}'
    (two_shards / "model.safetensors.index.json").write_text(text)
    index_refused(two_shards, "index is not JSON (duplicate key 'a'")


def test_deeply_nested_index(two_shards: Path) -> None:
    (two_shards / "model.safetensors.index.json").write_text('{"metadata":' + nested(100_000) + ',"weight_map":{}}')
    index_refused(two_shards, "nested more than 127 levels deep")


def test_nul_in_a_shard_name(two_shards: Path) -> None:
    _index(two_shards, {"a": "model\x00.safetensors", "b": SHARD_2})
    path_refused(two_shards, "is not a plain relative path")


def test_lone_surrogate_in_the_index(two_shards: Path) -> None:
    (two_shards / "model.safetensors.index.json").write_text('{"weight_map": {"a": "\\udc00", "b": "' + SHARD_2 + '"}}')
    index_refused(two_shards, "lone UTF-16 surrogate")
