"""The engines, one module each. Importing this package imports every engine module in it,
which registers the engines (``ppgen.register``); a new engine needs no edit here."""

import importlib
import pkgutil

__all__: list[str] = []

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
