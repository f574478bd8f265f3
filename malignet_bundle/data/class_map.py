"""Lesion class map: names in annotation files ↔ integer labels the network learns (0 is background)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ClassMap", "DEFAULT_CLASSES", "normalise_class_name"]

# Thesis §5.1 (Table 3): the four lesion types the readers labeled.
DEFAULT_CLASSES = {1: "malignant", 2: "infection_inflammation", 3: "degenerative_change", 4: "post_trauma"}


def normalise_class_name(name: str) -> str:
    """Case- and punctuation-insensitive key: "Infection/Inflammation" and "infection_inflammation" agree."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


class ClassMap:
    """Mapping between lesion class names and labels 1…C.

    Args:
        classes: ``{label: name}`` with labels 1…C; label 0 (background) is implicit and may be present.
        aliases: extra ``{alias: name}`` spellings accepted on import (e.g. "metastasis": "malignant").
    """

    def __init__(self, classes: Mapping[int | str, str], aliases: Mapping[str, str] | None = None) -> None:
        items = {int(k): str(v) for k, v in classes.items() if int(k) != 0}
        if not items or sorted(items) != list(range(1, len(items) + 1)):
            raise ValueError(f"class labels must be 1..C without gaps, got {sorted(items)}")
        self.names = [items[i] for i in range(1, len(items) + 1)]
        self._lookup = {normalise_class_name(n): i for i, n in items.items()}
        for alias, target in (aliases or {}).items():
            self._lookup[normalise_class_name(alias)] = self.label(target)

    @classmethod
    def from_metadata(cls, path: str | os.PathLike) -> ClassMap:
        """Read ``network_data_format.outputs.pred.channel_def`` of a bundle's ``metadata.json``."""
        meta = json.loads(Path(path).read_text())
        try:
            channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        except KeyError as e:
            raise ValueError(f"{path}: no network_data_format.outputs.pred.channel_def class map") from e
        return cls(channel_def, meta.get("class_aliases"))

    @property
    def num_classes(self) -> int:
        """Number of lesion classes C (background excluded)."""
        return len(self.names)

    def label(self, name: str) -> int:
        """Label of class ``name``; raises ``KeyError`` listing the known names."""
        key = normalise_class_name(name)
        if key not in self._lookup:
            raise KeyError(f"unknown class name {name!r}; known: {', '.join(self.names)}")
        return self._lookup[key]

    def name(self, label: int) -> str:
        """Name of class ``label`` (1…C)."""
        if not 1 <= int(label) <= len(self.names):
            raise KeyError(f"label {label} outside 1..{len(self.names)}")
        return self.names[int(label) - 1]

    def __contains__(self, name: object) -> bool:
        return normalise_class_name(str(name)) in self._lookup

    def __repr__(self) -> str:
        return f"ClassMap({dict(enumerate(self.names, start=1))})"
