"""Split weights: several Parquet files of at most ``max_file_size`` bytes, and the index naming them.

A split output holds ``weights-00001-of-0000N.parquet``... and ``weights.parquet.index.json``
(schema in docs/format.md) instead of ``weights.parquet``. Chunks go to the current file until it
would pass the size; a chunk never spans two files, so a file is larger than the limit only when a
single chunk's encoded data is. The number of files is known only at the end, so they are written
as ``weights-00001.parquet.incomplete``... and renamed when the last one is closed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from streamconv._files import file_record, write_json
from streamconv.format.schema import INDEX_FILENAME, split_name, version_for
from streamconv.format.writer import P, Piece, WeightsWriter, WriteSummary

__all__ = ["SplitWeightsWriter", "write_index"]

# Bytes a file's Parquet footer and schema add to its chunks' data, counted against the limit.
FILE_OVERHEAD = 8 * 1024
# Bytes beside a chunk's data (its row's other columns, a row group's footer entry, zstd's frame),
# counted against the limit. Chunks are counted at zstd's worst case (their stored size plus 1/128),
# never at their compressed size, which the writer learns only after encoding ahead: so no file
# passes the limit, and files come out below it by about the compression ratio.
ROW_OVERHEAD = 1024


class SplitWeightsWriter:
    """Writes chunks into as many :class:`WeightsWriter` files as ``max_file_size`` needs.

    Args:
        folder: The (staging) output folder.
        max_file_size: Largest file, in bytes (exceeded only by a single chunk larger than it).
        **writer_options: Passed to each :class:`WeightsWriter` (compression, level, workers...).
    """

    def __init__(self, folder: Path, max_file_size: int, **writer_options: Any) -> None:
        self.folder = folder
        self.max_file_size = max_file_size
        self.writer_options = writer_options
        self.summary = WriteSummary()
        self.files: list[dict[str, Any]] = []  # {"path", "tensors"} per file, in order

    def write(
        self, chunks: Iterable[P], on_written: Callable[[P, str | None], None] | None = None
    ) -> WriteSummary:
        """Encode and write every chunk, opening a new file when the current one is full."""
        temporary: list[Path] = []
        try:
            for group in self._files(chunks):
                path = self.folder / f"weights-{len(temporary) + 1:05d}.parquet"
                temporary.append(path)
                with WeightsWriter(path, **self.writer_options) as writer:
                    part = writer.write(group, on_written)
                self._add(part)
            self._rename(temporary)
        except BaseException:
            for path in temporary:
                path.unlink(missing_ok=True)
            raise
        return self.summary

    def _files(self, chunks: Iterable[P]) -> Iterator[Iterator[P]]:
        """Cut the chunk stream into one iterator per file, by the chunks' encoded sizes so far."""
        stream = iter(chunks)
        first = next(stream, None)
        if first is None:
            yield iter(())
            return
        head: list[P | None] = [first]
        while head[0] is not None:
            yield self._one_file(stream, head)

    def _one_file(self, stream: Iterator[P], head: list[P | None]) -> Iterator[P]:
        # The first chunk always goes in, so every file holds at least one.
        budget = self.max_file_size - FILE_OVERHEAD
        used = 0
        while head[0] is not None:
            piece = head[0]
            estimate = self._estimate(piece)
            if used and used + estimate > budget:
                return
            used += estimate
            yield piece
            head[0] = next(stream, None)

    @staticmethod
    def _estimate(piece: Piece) -> int:
        """An upper bound of the chunk's bytes in the file: zstd's worst case on its stored bytes."""
        stored = piece.store_as.itemsize if piece.store_as is not None else piece.ref.dtype.itemsize
        raw = piece.element_count * stored
        if piece.store_as is not None and piece.store_as.name == "int8" and piece.ref.dtype.kind == "f":
            raw += raw // 16  # its float16 scales: 2 bytes per 64 codes, and one block more per row of at least 64
        return raw + (raw >> 7) + ROW_OVERHEAD

    def _add(self, part: WriteSummary) -> None:
        total = self.summary
        total.tensor_count += part.tensor_count
        total.chunk_count += part.chunk_count
        total.parameter_count += part.parameter_count
        total.raw_bytes += part.raw_bytes
        total.data_bytes += part.data_bytes
        total.stored_dtypes.update(part.stored_dtypes)
        self.files.append({"tensors": list(part.stored_dtypes), "chunks_xxh3": f"{part.chunks_xxh3:016x}"})

    def _rename(self, temporary: list[Path]) -> None:
        count = len(temporary)
        for i, (path, entry) in enumerate(zip(temporary, self.files, strict=True), start=1):
            final = self.folder / split_name(i, count)
            os.replace(path, final)
            temporary[i - 1] = final
            entry.update(file_record(final, self.folder))
        write_index(self.folder, self.files, version_for(bool(self.writer_options.get("quantized"))))


def write_index(folder: Path, files: list[dict[str, Any]], version: int) -> Path:
    """Write ``weights.parquet.index.json`` for ``files`` (``path, bytes, sha256, chunks_xxh3, tensors`` each)."""
    index = {
        "format": "streamconv-split",
        "format_version": version,
        "total_bytes": sum(f["bytes"] for f in files),
        "files": [{"path": f["path"], "bytes": f["bytes"], "sha256": f["sha256"], "chunks_xxh3": f["chunks_xxh3"],
                   "tensors": f["tensors"]} for f in files],
        "weight_map": {name: f["path"] for f in files for name in f["tensors"]},
    }
    path = folder / INDEX_FILENAME
    write_json(index, path)
    return path
