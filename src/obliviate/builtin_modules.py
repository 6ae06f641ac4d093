"""The built-in methods and benchmarks register themselves when their modules are imported;
each registry imports its modules once, on first use (so that a plugin's registration, and
`obliviate --help`, do not pay for every method's imports up front)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable


class BuiltinModules:
    """`load(modules)` imports them once. `loaded` is set only after every import succeeded, so a
    failed load is raised again at the next use instead of leaving a half-filled registry; while
    the imports run, their own register_* calls must not start the load again (`_loading`)."""

    def __init__(self) -> None:
        self.loaded = False
        self._loading = False

    def load(self, modules: Iterable[str]) -> None:
        if self.loaded or self._loading:
            return
        self._loading = True
        try:
            for module in modules:
                importlib.import_module(module)
            self.loaded = True
        finally:
            self._loading = False
