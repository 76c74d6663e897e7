"""One registry per kind of component: a name -> entry table whose entries carry what the rest of
the code needs to know about them (an aggregator's exponent, a dataset's kind, ...).

Configs, tables, tests and the CLI read a registry; nothing else lists the names, so adding a
component is one entry (plus its test). A lookup of an unknown name is a ``ValueError`` that names
the config key and the choices.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only ``name -> entry`` mapping of one kind of component, e.g. ``Registry("loss", {...})``."""

    def __init__(self, kind: str, entries: dict[str, T]):
        self.kind, self._entries = kind, dict(entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str, key: str | None = None) -> T:
        """The entry for ``name``; an unknown name raises a ``ValueError`` that names ``key`` (the
        config key it came from, e.g. ``pool.name``) and the registered choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{key}={name!r}" if key else f"unknown {self.kind} {name!r}"
            raise ValueError(f"{where} is not a registered {self.kind}; choose one of {sorted(self._entries)}") from None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
