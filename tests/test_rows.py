"""cspnet.rows: the per-image rows every command writes the same way, read back exactly, a killed writer's file
valid row by row, appends that cut a torn tail, and k-way merges of shards."""

import json
import os
import subprocess
import sys

import pytest

from cspnet import rows
from cspnet.errors import DatasetError, InvalidOptionError

CLASSES = ["cat, house cat", 'say "hi"', "naïve", "d"]


def _rows(n, start=0):
    out = []
    for i in range(start, start + n):
        top = [(i + k) % 4 for k in range(3)]
        out.append(rows.make_row(i, f"img/{i},x.jpg", top, [0.5, 0.3, 0.2], CLASSES, label=i % 4,
                                 labels=[1, 2] if i % 2 else []))
    return out


@pytest.mark.parametrize("suffix", rows.FORMATS)
def test_round_trip_every_format(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    want = _rows(10) + [rows.error_row(10, "bad\nname.jpg", "truncated JPEG")]
    with rows.open_writer(path) as w:
        w.write(want[:4])
        w.write(want[4:])
    assert rows.read_rows(path) == want
    assert want[0]["pred_class"] == CLASSES[0] and want[0]["topk_classes"] == [CLASSES[i] for i in (0, 1, 2)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_torn_tail_is_ignored_and_cut_before_append(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with rows.open_writer(path) as w:
        w.write(_rows(5))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a writer killed mid-line
    assert [r["index"] for r in rows.read_rows(path)] == [0, 1, 2, 3]
    with rows.open_writer(path, append=True) as w:
        w.write(_rows(3, start=4))
    assert rows.read_rows(path) == _rows(7)


def test_csv_path_with_newline_cut_inside_its_quotes(tmp_path):
    path = tmp_path / "out.csv"
    odd = [rows.make_row(0, "a.jpg", [1], [0.9], None), rows.make_row(1, "line\nbreak.jpg", [2], [0.8], None)]
    with rows.open_writer(path) as w:
        w.write(odd)
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"line\n") + 5])  # ends with a newline, inside the quoted path
    assert rows.read_rows(path) == odd[:1]


def test_killed_writer_leaves_valid_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    code = (f"import os, cspnet.rows as r\nw = r.open_writer({str(path)!r})\n"
            f"w.write([r.make_row(i, 'p', [0], [1.0], None) for i in range(3)])\nos._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert [r["index"] for r in rows.read_rows(path)] == [0, 1, 2]
    for line in path.read_text().splitlines():
        json.loads(line)


def test_existing_file_needs_append_or_replace_and_replace_keeps_it_until_done(tmp_path):
    path = tmp_path / "out.jsonl"
    with rows.open_writer(path) as w:
        w.write(_rows(2))
    with pytest.raises(InvalidOptionError, match="exists.*--resume"):
        rows.open_writer(path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with rows.open_writer(path, replace=True) as w:
            w.write(_rows(1, start=50))
            raise RuntimeError("killed")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.jsonl"]
    with rows.open_writer(path, replace=True) as w:
        w.write(_rows(1, start=50))
    assert [r["index"] for r in rows.read_rows(path)] == [50]


def test_merge_is_in_index_order(tmp_path):
    parts = []
    for rank in range(3):
        part = tmp_path / f"part{rank}.jsonl"
        with rows.open_writer(part) as w:
            w.write([r for r in _rows(10) if r["index"] % 3 == rank])
        parts.append(part)
    assert rows.merge(parts, tmp_path / "all.csv") == 10
    assert rows.read_rows(tmp_path / "all.csv") == _rows(10)


def test_bad_files_and_names(tmp_path):
    with pytest.raises(InvalidOptionError, match="extension"):
        rows.check_format(tmp_path / "out.txt")
    (tmp_path / "x.jsonl").write_text('{"index": 0, "path": "a"}\nnot json\n')
    with pytest.raises(DatasetError, match="x.jsonl:2"):
        rows.read_rows(tmp_path / "x.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="columns"):
        rows.read_rows(tmp_path / "x.csv")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(DatasetError, match="complete only when"):
        rows.read_rows(tmp_path / "x.parquet")
    with pytest.raises(InvalidOptionError, match="cannot be appended"):
        rows.open_writer(tmp_path / "x.parquet", append=True)


def test_meta_sidecar(tmp_path):
    path = tmp_path / "out.jsonl"
    assert rows.read_meta(path) is None
    rows.write_meta(path, {"classes": CLASSES})
    assert rows.read_meta(path) == {"classes": CLASSES}
