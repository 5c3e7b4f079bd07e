"""The shape of the house: layers without upward imports or cycles, a command line that starts without torch, and
no config dict below ``cspnet/config`` (docs/architecture.md draws the same picture)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# A module may import from its own layer or a lower one (a package lives in its layer, with its submodules). The
# package face (cspnet/__init__.py) names everything but imports only its leaves: it stands at the bottom.
LAYERS = [
    {"errors", "_io", "_version", "_lazy", "__init__"},
    {"models", "data", "weights", "spec", "workdirs", "rows"},
    {"zoo", "export", "analysis", "visualize", "optimize", "plotting", "report", "quantize"},
    {"config"},
    {"engine", "inference", "serve"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((SRC / "cspnet").rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every cspnet module ``name`` imports, at any depth (a lazy import inside a function counts too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known, found = _modules(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = f"{base}.{node.module}" if node.module and base else node.module or base
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_no_upward_import_and_no_cycle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})" for a, bs in graph.items() for b in bs
              if _layer(b) > _layer(a)]
    assert not upward, upward
    # a cycle is a path back to where it started (packages stand apart from the submodules they re-export)
    graph = {a: {b for b in bs if not a.startswith(b + ".") and not b.startswith(a + ".")} for a, bs in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}"
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_every_module_has_a_layer():
    assert all(_layer(m) >= 0 for m in _modules())


USAGE_ERRORS = {  # argument errors: the subcommand's usage (not the top level's), before torch is imported
    ("test", "nope.py", "x", "--bogus"): ["usage: cspnet test", "unrecognized arguments: --bogus"],
    ("predict", "x.jpg", "--topk", "0"): ["usage: cspnet predict", "argument --topk: expected an integer >= 1, got '0'"],
    ("test", "c.py", "x", "--num-workers", "-1"): ["argument --num-workers: expected an integer >= 0, got '-1'"],
    ("plot",): ["usage: cspnet plot", "the following arguments are required: RUN"],
}


@pytest.mark.parametrize("args", [("--help",), ("list",), ("predict", "--help"), ("plot", "--help"), *USAGE_ERRORS])
def test_the_command_line_starts_without_torch(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cspnet", *args], capture_output=True, text=True,
                          timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert imported and not {m for m in imported if m == "torch" or m.startswith("torch.")}, args
    assert proc.returncode == (2 if args in USAGE_ERRORS else 0), proc.stderr[-500:]
    for words in USAGE_ERRORS.get(args, []):
        assert words in proc.stderr, proc.stderr[-500:]


BELOW_CONFIG = ["engine", "data", "weights", "inference.py"]


def _config_dict_uses(path: Path) -> list[str]:
    """Lines that index, ``.get`` or read an attribute of a config dict: a name bound to ``load_config(...)`` or a
    parameter named ``cfg``; or that import the config's raw pieces."""
    tree, found = ast.parse(path.read_text()), []
    names = {a.arg for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda)) for a in n.args.args
             if a.arg == "cfg"}
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and ast.unparse(n.value.func).endswith(
                "load_config"):
            names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        if isinstance(n, ast.ImportFrom) and "config" in (n.module or ""):
            found += [f"{path.name}:{n.lineno} imports {a.name}" for a in n.names
                      if a.name in ("Config", "SCHEMA", "load", "merge", "validate")]
    for n in ast.walk(tree):
        if isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.value, ast.Name) and n.value.id in names:
            found.append(f"{path.name}:{n.lineno} {ast.unparse(n)}")
    return found


def test_no_config_dict_below_config():
    paths = [p for place in BELOW_CONFIG for p in ((SRC / "cspnet" / place).rglob("*.py")
                                                   if (SRC / "cspnet" / place).is_dir() else [SRC / "cspnet" / place])]
    uses = [use for p in paths for use in _config_dict_uses(p)]
    assert not uses, uses


def test_the_config_dict_check_finds_a_use(tmp_path):
    """The check above is not vacuous: it finds the uses it looks for."""
    bad = tmp_path / "bad.py"
    bad.write_text("from cspnet.config import Config, load_config\n\n"
                   "def f(cfg):\n    return cfg['model'], cfg.get('x')\n\n"
                   "def g(path):\n    c = load_config(path)\n    return c.model\n")
    assert len(_config_dict_uses(bad)) == 4
