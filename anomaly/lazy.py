"""Public names of a package that load on first use (PEP 562), so that importing the package
costs nothing until a name is used: `anomaly` and `anomaly.data` use it."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], names: list[str]):
    """(`__getattr__`, `__dir__`) for `package`: each name of `exports` is read from its module
    when first asked for; `dir()` lists `names`."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
