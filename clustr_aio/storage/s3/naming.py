"""Object keys: one per stored file, and room beside it for files derived from it.

``<prefix><name>`` holds a stored file's bytes; ``<prefix>.derived/<name>/<variant>`` holds a
file made from it (a thumbnail's ``320.webp``, say). Stored names never start with a dot, so
no stored file can take a derived file's key, and deleting a file deletes its derived ones by
listing one key prefix. Anything else under ``<prefix>.`` is never a stored file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from clustr_aio.domain.names import numbered

__all__ = ["DERIVED", "ObjectKeys", "taken_numbers"]

DERIVED = ".derived/"


@dataclass(frozen=True, slots=True)
class ObjectKeys:
    prefix: str
    """"" or segments ending in "/"."""

    def file(self, name: str) -> str:
        return self.prefix + name

    def derived(self, name: str, variant: str) -> str:
        return f"{self.prefix}{DERIVED}{name}/{variant}"

    def derived_prefix(self, name: str) -> str:
        return f"{self.prefix}{DERIVED}{name}/"

    def derived_from(self, key: str) -> str | None:
        """The stored name a derived file's ``key`` was made from; None for any other key."""
        head = self.prefix + DERIVED
        if not key.startswith(head):
            return None
        name, slash, _ = key[len(head) :].partition("/")
        return name if slash and is_stored_name(name) else None

    def name_of(self, key: str) -> str | None:
        """The stored name whose bytes ``key`` holds; None for any other key."""
        if not key.startswith(self.prefix):
            return None
        name = key[len(self.prefix) :]
        if not is_stored_name(name):
            return None
        return name

    def numbered_prefix(self, desired: str) -> str:
        """A key prefix that every numbered alternative of ``desired`` shares."""
        return self.prefix + _split(desired)[0]


def is_stored_name(name: str) -> bool:
    """One path segment that is not a dot-name: what an upload can be stored as."""
    return bool(name) and name[0] != "." and "/" not in name and "\0" not in name


def taken_numbers(desired: str, names: Iterable[str]) -> set[int]:
    """Which alternatives of ``desired`` (0 for itself, n for ``numbered(desired, n)``) are
    among ``names``."""
    head, tail = _split(desired)
    pattern = re.compile(re.escape(head) + r"-([1-9][0-9]*)" + re.escape(tail))
    taken = set()
    for name in names:
        if name == desired:
            taken.add(0)
        elif match := pattern.fullmatch(name):
            taken.add(int(match.group(1)))
    return taken


def _split(desired: str) -> tuple[str, str]:
    """``numbered(desired, n)`` is ``head + "-" + str(n) + tail`` (for n > 0)."""
    stem, dot, extension = desired.rpartition(".")
    if not dot or not stem:
        return desired, ""
    return stem, "." + extension


assert numbered("a.b.jpg", 7) == "-7".join(_split("a.b.jpg"))  # the two stay in step
