"""``Param``: a nested dict with attribute access, the shape of a parameter tree."""

from __future__ import annotations

from typing import Any, Mapping


class Param(dict):
    """A dict whose keys can also be read and written as attributes.

    Nested mappings become ``Param`` too, so ``p.scan.xy.raster.nx`` works.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, Param):
            value = Param(value)
        super().__setitem__(key, value)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"parameter {name!r} is not set (known: {', '.join(sorted(self)) or 'none'})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    def get_path(self, path: str, default: Any = None) -> Any:
        """Value at a dotted path, or ``default`` when any part is missing."""
        node: Any = self
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A plain nested dict copy (for JSON, HDF5 or TOML output)."""
        return {k: v.to_dict() if isinstance(v, Param) else v for k, v in self.items()}


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """Recursively merge ``update`` into a copy of ``base``; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
