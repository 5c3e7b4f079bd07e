"""Package faces that import on first use (PEP 562): ``import cspnet`` and the command line start without torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public name ``n`` lives in its submodule ``exports[n]``
    (``"weights.records"``, or ``"weights:load"`` for another name there); other names are its submodules."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, _, attr = exports[name].partition(":")
        namespace[name] = value = getattr(importlib.import_module(f"{package}.{module}"), attr or name)
        return value  # looked up once: the next access finds it in the namespace
    return __getattr__, lambda: sorted({*exports, *(k for k in namespace if not k.startswith("_"))})
