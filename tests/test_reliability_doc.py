"""docs/reliability.md and the tests agree: every case has a test, every reliability test has a line."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `([a-z0-9-]+)` \|.+\| `(tests/[\w/]+\.py)::(\w+)` \|\s*$")


def _marked_cases() -> dict[str, set[tuple[str, str]]]:
    """case id -> {(test file, function)} from ``@pytest.mark.reliability(...)`` / ``@reliability(...)``."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if not isinstance(dec, ast.Call):
                    continue
                name = dec.func.attr if isinstance(dec.func, ast.Attribute) else getattr(dec.func, "id", "")
                if name == "reliability":
                    for arg in dec.args:
                        found.setdefault(arg.value, set()).add((f"tests/{path.name}", node.name))
    return found


def _doc_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [m.groups() for line in text.splitlines() if (m := ROW.match(line))]
    table_lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(table_lines), "a table line does not follow the format | `case` | ... | `tests/x.py::test` |"
    return rows


def test_every_case_has_a_test_and_every_test_a_line():
    rows = _doc_rows()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a case appears twice in docs/reliability.md"
    marked = _marked_cases()
    assert set(ids) == set(marked), (
        f"cases without a test: {sorted(set(ids) - set(marked))}; tests without a line: {sorted(set(marked) - set(ids))}"
    )
    for case, file, func in rows:
        assert (file, func) in marked[case], f"{case}: {file}::{func} does not carry @reliability({case!r})"
