"""Per-image result rows: what ``cspnet test --out`` and ``cspnet predict --output`` write, and ``cspnet report``
reads. One row per image, the same columns everywhere (:data:`COLUMNS`), in ``.jsonl``, ``.csv`` or ``.parquet``.

Rows are written as they come and flushed per :meth:`RowWriter.write`, so a killed run's ``.jsonl``/``.csv`` holds
every row written so far, valid line by line (a torn last line is ignored on reading and cut before appending).
Parquet keeps its index in a footer written at close, so a parquet file is written under a temporary name and
appears complete or not at all. Torch-free: the report reads rows without importing torch.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import heapq
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ._io import atomic_path, atomic_write, output_path
from .errors import DatasetError, InvalidOptionError

# name -> type; "?" may be None. `labels` is ReaL's label set; `error` is predict --skip-bad's reason for a bad
# image (its prediction fields are then None).
COLUMNS: dict[str, str] = {
    "index": "int", "path": "str", "label": "int?", "labels": "list[int]?", "pred_label": "int?",
    "pred_score": "float?", "pred_class": "str?", "topk_labels": "list[int]?", "topk_scores": "list[float]?",
    "topk_classes": "list[str]?", "error": "str?",
}
FORMATS = (".jsonl", ".csv", ".parquet")
_LISTS = {name for name, kind in COLUMNS.items() if kind.startswith("list")}
_CASTS = {"int": int, "float": float, "str": str}
META_SUFFIX = ".meta.json"
# a parquet row group per this many rows: small groups make a large file slow to read; rows wait in memory till then
_PARQUET_GROUP = 4096


def check_format(path: str | os.PathLike, what: str = "--output") -> str:
    """The format of ``path`` by its extension (one of :data:`FORMATS`), checked before any work.

    Raises:
        InvalidOptionError: another extension, or ``.parquet`` without pyarrow (the error says how to install it).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidOptionError(f"{what} {str(path)!r}: the extension decides the format; use one of "
                                 f"{', '.join(FORMATS)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidOptionError(f"{what} {str(path)!r}: parquet needs pyarrow: "
                                     f"pip install \"cspnet[parquet]\" (or use .jsonl/.csv)") from None
    return suffix


def make_row(index: int, path: str, topk_labels: Sequence[int], topk_scores: Sequence[float],
             classes: Sequence[str] | None, label: int | None = None,
             labels: Sequence[int] | None = None) -> dict[str, Any]:
    """One image's row from its top-k (best first): ``pred_*`` is the first of them; names from ``classes``."""
    top = [int(i) for i in topk_labels]
    return {
        "index": int(index), "path": str(path), "label": None if label is None else int(label),
        "labels": None if labels is None else [int(x) for x in labels], "pred_label": top[0],
        "pred_score": float(topk_scores[0]), "pred_class": classes[top[0]] if classes is not None else None,
        "topk_labels": top, "topk_scores": [float(s) for s in topk_scores],
        "topk_classes": [classes[i] for i in top] if classes is not None else None, "error": None,
    }


def error_row(index: int, path: str, error: str) -> dict[str, Any]:
    """The row of an image that could not be read (predict ``--skip-bad``)."""
    return {**dict.fromkeys(COLUMNS), "index": int(index), "path": str(path), "error": str(error)}


def _complete_prefix(path: Path, suffix: str) -> int:
    """Bytes of ``path`` that hold whole rows: a killed writer may have left half a line at the end."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if suffix == ".csv" and end:
        # A quoted path may hold a newline, so the last newline may fall inside a record: keep the records the
        # csv reader completes with the right number of cells.
        text, done = data[:end].decode("utf-8"), 0
        lines = io.StringIO(text, newline="")
        reader = csv.reader(iter(lines.readline, ""))
        for n, cells in enumerate(reader):
            if n == 0 and cells != list(COLUMNS):
                return end  # not a rows file: the reader says so, naming its columns
            if len(cells) != len(COLUMNS):
                break
            done = lines.tell()
        end = len(text[:done].encode("utf-8"))
    return end


class RowWriter:
    """Writes rows to ``path`` in its format (:func:`open_writer`); a context manager."""

    def __init__(self, path: Path, suffix: str, append: bool, replace: bool, what: str):
        self.path, self.suffix, self.count = path, suffix, 0
        self._stack = contextlib.ExitStack()
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        exists = path.exists()
        if exists and path.stat().st_size and not (append or replace):
            raise InvalidOptionError(f"{what} {str(path)!r} exists; give another name, or resume it (--resume)")
        if suffix == ".parquet" or (exists and not append):
            if append and suffix == ".parquet":
                raise InvalidOptionError(f"{what} {str(path)!r}: a parquet file cannot be appended to; resume with "
                                         f".jsonl or .csv output")
            # written beside and renamed at close: a parquet file is unreadable until closed, and an earlier result
            # is kept until the new one is complete
            target = self._stack.enter_context(atomic_path(path, what=what))
        else:
            target = path
            path.parent.mkdir(parents=True, exist_ok=True)  # output_path checked that it can be made
            if append and exists:
                next(iter_rows(path), None)  # a file of another kind is an error, not something to append to
                os.truncate(path, _complete_prefix(path, suffix))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(target, _arrow_schema())
        else:
            self._file = self._stack.enter_context(open(target, "a" if append else "w", encoding="utf-8",
                                                        newline=""))
            if suffix == ".csv":
                self._csv = csv.DictWriter(self._file, fieldnames=list(COLUMNS))
                if self._file.tell() == 0:
                    self._csv.writeheader()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` (dicts with :data:`COLUMNS`) and flush them to the file (parquet: per row group)."""
        rows = list(rows)
        self.count += len(rows)
        if self.suffix == ".parquet":
            self._pending += rows
            if len(self._pending) >= _PARQUET_GROUP:
                self._flush_parquet()
            return
        if self.suffix == ".jsonl":
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        else:
            self._csv.writerows({k: json.dumps(v, ensure_ascii=False) if k in _LISTS and v is not None else v
                                 for k, v in r.items()} for r in rows)
        self._file.flush()

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=_arrow_schema()))
            self._pending = []

    def close(self) -> None:
        """Finish the file: a parquet file's last row group and footer; a replacement takes the old file's place."""
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.suffix == ".parquet":
                if exc is None:
                    self._flush_parquet()
                self._writer.close()
        finally:
            # on an error the temporary file (a parquet file, a replacement) is removed and an earlier file stays;
            # rows streamed into a new file stay, valid line by line
            self._stack.__exit__(type(exc) if exc is not None else None, exc, None)

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._finish(exc)


def open_writer(path: str | os.PathLike, *, append: bool = False, replace: bool = False, what: str = "--output",
                inputs: Iterable[str | os.PathLike | None] = ()) -> RowWriter:
    """A :class:`RowWriter` for ``path``. A new file is written in place as rows come (a killed run keeps its
    rows). ``append``: continue an existing ``.jsonl``/``.csv`` (its torn last line cut first); ``replace``: an
    existing file is replaced when the writer closes cleanly (until then it is untouched); with neither, an existing
    file is an error. ``inputs``: files the output must not be (:func:`cspnet._io.output_path`)."""
    suffix = check_format(path, what)
    real = output_path(path, what, inputs)
    return RowWriter(real, suffix, append, replace, what)


def _arrow_schema():
    import pyarrow as pa

    kinds = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    fields = []
    for name, kind in COLUMNS.items():
        base = kind.rstrip("?")
        typ = pa.list_(kinds[base[5:-1]]) if base.startswith("list") else kinds[base]
        fields.append(pa.field(name, typ, nullable=kind.endswith("?")))
    return pa.schema(fields)


def _decode_csv(cells: dict[str, str], where: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, kind in COLUMNS.items():
        text = cells.get(name)
        if text is None or text == "":
            if not kind.endswith("?"):
                raise DatasetError(f"{where}: column {name!r} is empty; a rows file has a value there")
            row[name] = None
        elif name in _LISTS:
            row[name] = json.loads(text)
        else:
            row[name] = _CASTS[kind.rstrip("?")](text)
    return row


def iter_rows(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a file :class:`RowWriter` wrote, one at a time (bounded memory). A torn last line (a killed
    writer) is skipped.

    Raises:
        DatasetError: not a rows file (naming the file and the line).
    """
    path = Path(path)
    suffix = check_format(path, "rows file")
    if not path.is_file():
        raise DatasetError(f"rows file {str(path)!r} does not exist or is not a file")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as e:
            raise DatasetError(f"{str(path)!r} is not a readable parquet file ({e}); a parquet file is "
                               f"complete only when its writer closed it") from None
        for batch in table.iter_batches():
            yield from batch.to_pylist()
        return
    end = _complete_prefix(path, suffix)
    if suffix == ".csv":
        with open(path, "rb") as b:
            text = b.read(end).decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is not None and list(reader.fieldnames) != list(COLUMNS):
            raise DatasetError(f"{str(path)!r}: its columns {reader.fieldnames} are not those of a cspnet rows "
                               f"file ({list(COLUMNS)})")
        for n, cells in enumerate(reader, 2):
            try:
                yield _decode_csv(cells, f"{path}:{n}")
            except (ValueError, TypeError) as e:
                raise DatasetError(f"{path}:{n}: not a rows line ({e})") from None
        return
    with open(path, encoding="utf-8") as f:
        done = 0
        for n, line in enumerate(f, 1):
            done += len(line.encode("utf-8"))
            if done > end:
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not a JSON line ({e})") from None
            if not isinstance(row, dict) or "index" not in row or "path" not in row:
                raise DatasetError(f"{path}:{n}: not a rows line (an object with 'index' and 'path')")
            yield {name: row.get(name) for name in COLUMNS}


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of ``path`` (:func:`iter_rows`)."""
    return list(iter_rows(path))


def merge(sources: Sequence[str | os.PathLike], output: str | os.PathLike, *, what: str = "--output") -> int:
    """Write the rows of ``sources`` (each in index order, as one rank writes its shard) into ``output`` in index
    order, atomically, streaming (a k-way merge: memory does not grow with the rows). Returns the row count."""
    suffix = check_format(output, what)
    count = 0
    with RowWriter(output_path(output, what), suffix, append=False, replace=True, what=what) as out:
        batch: list[dict[str, Any]] = []
        for row in heapq.merge(*(iter_rows(s) for s in sources), key=lambda r: r["index"]):
            batch.append(row)
            if len(batch) >= 1024:
                out.write(batch)
                count, batch = count + len(batch), []
        out.write(batch)
        count += len(batch)
    return count


def part_path(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its rows of ``output`` under torchrun:
    ``<output>.part<rank>of<world>.jsonl`` beside it (a ``.jsonl`` whatever the output's format: flushed per batch,
    so a killed rank keeps its rows); :func:`merge` makes the output of the parts."""
    return Path(f"{output}.part{rank}of{world_size}.jsonl")


def part_files(output: str | os.PathLike) -> list[Path]:
    """The :func:`part_path` files beside ``output`` of any world size (a killed run of 4 processes may be
    resumed by 2, or by one), sorted."""
    found = glob.glob(glob.escape(str(output)) + ".part*of*.jsonl")
    pattern = re.compile(re.escape(str(output)) + r"\.part\d+of\d+\.jsonl")
    return sorted(Path(p) for p in found if pattern.fullmatch(p))


def meta_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}{META_SUFFIX}")


def write_meta(path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """The sidecar of rows file ``path`` (``<path>.meta.json``): the class names, model, data, eval setting and
    metrics, which a row does not repeat."""
    return atomic_write(meta_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n",
                                                                    encoding="utf-8"), what="rows metadata")


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of rows file ``path``, or None when there is none."""
    side = meta_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{str(side)!r} is not valid JSON ({e}); remove it or write it again") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{str(side)!r} is not a JSON object")
    return meta
