"""The scopes a key may hold, and what each allows. ``admin`` allows everything, and sees every
owner's files."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

__all__ = ["ADMIN", "SCOPES", "Scope", "allows", "parse_scopes"]

Scope = Literal["upload", "read", "delete", "admin"]
SCOPES: Final[tuple[Scope, ...]] = ("upload", "read", "delete", "admin")
ADMIN: Final[Scope] = "admin"


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """``upload,read`` (or a list) as a set of scopes; ValueError naming an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(item.strip().lower() for item in items if item.strip())
    unknown = sorted(scopes.difference(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"at least one scope is needed: {', '.join(SCOPES)}")
    return scopes


def allows(granted: frozenset[str], needed: Iterable[str]) -> bool:
    """Whether a key holding ``granted`` may call a route that needs any one of ``needed``."""
    return ADMIN in granted or not granted.isdisjoint(needed)
