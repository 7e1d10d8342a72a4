"""Shared test helpers: deterministic keys. Nothing here stands in for project code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import coincurve
import pytest


def make_key(i: int) -> coincurve.PrivateKey:
    """The i-th fixed test key (i >= 1): secret = i as 32 big-endian bytes."""
    return coincurve.PrivateKey(i.to_bytes(32, "big"))


@pytest.fixture
def keys() -> list[coincurve.PrivateKey]:
    return [make_key(i) for i in range(1, 11)]


#: What a sans-IO module (time as an argument, no I/O) must not import or call.
SANS_IO_FORBIDDEN_MODULES = {"time", "datetime", "trio", "anyio", "asyncio", "libp2p", "socket",
                             "threading", "os", "random", "sqlite3", "httpx"}
SANS_IO_FORBIDDEN_CALLS = {"time", "monotonic", "perf_counter", "now", "utcnow", "current_time",
                           "sleep", "open"}


def assert_sans_io(module_name: str) -> int:
    """Fail if the module imports a clock, socket, thread, file or event-loop module or calls a
    clock, sleep or open; returns how many calls the walk saw (so a test can check it really
    read the module's code)."""
    module = importlib.import_module(module_name)
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    calls = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            assert name.split(".")[0] not in SANS_IO_FORBIDDEN_MODULES, (module_name, name)
        if isinstance(node, ast.Call):
            calls += 1
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert called not in SANS_IO_FORBIDDEN_CALLS, (module_name, node.lineno, called)
    return calls
