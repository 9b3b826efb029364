"""Paths: `builtin:NAME` names a file shipped inside the package (gkd_jax/assets/NAME)."""

from __future__ import annotations

import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
BUILTIN = "builtin:"


def resolve_path(path: str) -> str:
    if path.startswith(BUILTIN):
        return os.path.join(ASSETS, path[len(BUILTIN) :])
    return os.path.abspath(os.path.expanduser(path))
