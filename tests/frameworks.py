"""Import a module of an installed RL framework (verl, OpenRLHF) the way the framework itself runs it.

The frameworks are installed without their dependencies (`make venv`: `pip install --no-deps`), because
their package `__init__`s import ray, torch GPU extensions and the like. The modules the adapter tests need
(verl's `load_extern_object`, OpenRLHF's reward-file executor) import only light things, so their parent
packages are put in `sys.modules` as bare packages over the installed folders, without running those
`__init__`s, and the module itself is imported for real: the code under test is the framework's own file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def framework_module(dist: str, module: str):
    """`module` of the installed distribution `dist` (skips when it is not installed); sys.modules is
    restored afterwards, so nothing of the framework leaks into other tests."""
    try:
        root = Path(importlib.metadata.distribution(dist).locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (make venv installs it without its dependencies)")
    before = set(sys.modules)
    parts = module.split(".")
    try:
        for i in range(1, len(parts)):
            name = ".".join(parts[:i])
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[name] = package
        yield importlib.import_module(module)
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
