"""Name -> constructor registries, filled by decorators at import time.

Adding a backbone, head, dataset or distiller is one new file with `@REGISTRY.register("name")`;
nothing else changes. An unknown name lists the known ones so a typo in a YAML file is obvious.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from utility.errors import ConfigError


class Registry:
    """A named table of constructors (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `@BACKBONES.register("face.iresnet50")`."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> Callable[..., Any]:
        """The constructor registered as `name`; a ConfigError listing the known names otherwise."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {known}")
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Construct the entry registered as `name` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
