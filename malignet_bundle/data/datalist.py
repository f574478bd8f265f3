"""Datalist JSON: splits of per-view items, paths relative to the dataset folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["SPLITS", "load_datalist", "resolve_items"]

SPLITS = ("labeled", "unlabeled", "validation", "test")
PATH_KEYS = ("image", "label")


def load_datalist(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Read a datalist JSON; raises ``ValueError`` naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: datalist not found")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not any(k in doc for k in SPLITS):
        raise ValueError(f"{path}: a datalist is an object with keys among {list(SPLITS)}")
    unknown = [k for k in doc if k not in SPLITS]
    if unknown:
        raise ValueError(f"{path}: unknown split keys {unknown}; expected {list(SPLITS)}")
    return {k: list(doc.get(k, [])) for k in SPLITS}


def resolve_items(items: list[dict], dataset_dir: str | os.PathLike, require_label: bool = False) -> list[dict]:
    """Copies of ``items`` with ``image``/``label`` joined to ``dataset_dir`` (absolute paths are kept).

    Args:
        items: datalist items of one split.
        dataset_dir: the folder the datalist's paths are relative to.
        require_label: raise ``ValueError`` naming the item when one has no ``label``.
    """
    root = Path(dataset_dir)
    resolved = []
    for k, item in enumerate(items):
        if require_label and "label" not in item:
            raise ValueError(f"item {k} ({item.get('image')}) has no 'label' but this split must be annotated")
        resolved.append({key: str(root / value) if key in PATH_KEYS else value for key, value in item.items()})
    return resolved
