"""The codec stays sans-I/O: no sockets, clock, randomness or threads, only in-memory bytes."""

from __future__ import annotations

import ast
from pathlib import Path

import pinfold.rapid.codec

ALLOWED = {"__future__", "collections.abc", "enum", "io", "struct"}  # io: BytesIO for complete messages


def test_codec_imports_only_pure_modules() -> None:
    tree = ast.parse(Path(pinfold.rapid.codec.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= ALLOWED, imported - ALLOWED
