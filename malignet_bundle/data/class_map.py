"""Lesion class map: names in annotation files ↔ integer labels the network learns (0 is background)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ClassMap", "DEFAULT_CLASSES", "MALIGNANT_CLASS", "normalise_class_name"]

# Thesis §5.1 (Table 3): the four lesion types the readers labeled.
DEFAULT_CLASSES = {1: "malignant", 2: "infection_inflammation", 3: "degenerative_change", 4: "post_trauma"}
# The class of metastases, which decides a study's metastasis verdict (thesis Table 7); metadata.json's
# ``malignant_class`` names another for a class map without it.
MALIGNANT_CLASS = "malignant"


def normalise_class_name(name: str) -> str:
    """Case- and punctuation-insensitive key: "Infection/Inflammation" and "infection_inflammation" agree."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


class ClassMap:
    """Mapping between lesion class names and labels 1…C.

    Args:
        classes: ``{label: name}`` with labels 1…C; label 0 (background) is implicit and may be present.
        aliases: extra ``{alias: name}`` spellings accepted on import (e.g. "metastasis": "malignant").
        malignant_class: the class (name or alias) whose lesions make a study's metastasis verdict positive
            (thesis Table 7); see :attr:`malignant_label`.
    """

    def __init__(
        self,
        classes: Mapping[int | str, str],
        aliases: Mapping[str, str] | None = None,
        malignant_class: str = MALIGNANT_CLASS,
    ) -> None:
        items = {int(k): str(v) for k, v in classes.items() if int(k) != 0}
        if not items or sorted(items) != list(range(1, len(items) + 1)):
            raise ValueError(f"class labels must be 1..C without gaps, got {sorted(items)}")
        self.names = [items[i] for i in range(1, len(items) + 1)]
        self._lookup = {normalise_class_name(n): i for i, n in items.items()}
        for alias, target in (aliases or {}).items():
            self._lookup[normalise_class_name(alias)] = self.label(target)
        self.malignant_class = str(malignant_class)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str = "metadata") -> ClassMap:
        """The class map of a bundle's parsed metadata (a config's ``@_meta_``; no file is read).

        Uses ``network_data_format.outputs.pred.channel_def`` and the optional ``class_aliases`` and
        ``malignant_class`` keys.

        Args:
            meta: the metadata content.
            source: where it came from, for the error message.

        Raises:
            ValueError: the metadata has no class map.
        """
        try:
            channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: no network_data_format.outputs.pred.channel_def class map") from e
        return cls(channel_def, meta.get("class_aliases"), meta.get("malignant_class", MALIGNANT_CLASS))

    @classmethod
    def from_metadata(cls, path: str | os.PathLike) -> ClassMap:
        """Read the class map of a bundle's ``metadata.json`` file (see :meth:`from_meta`)."""
        return cls.from_meta(json.loads(Path(path).read_text()), source=str(path))

    @property
    def malignant_label(self) -> int:
        """Label of the class whose lesions make the metastasis verdict positive (``malignant_class``).

        Raises:
            KeyError: the class map has no such class (set ``malignant_class`` in ``metadata.json``).
        """
        return self.label(self.malignant_class)

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
