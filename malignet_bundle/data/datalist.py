"""Datalist JSON: splits of per-view items, paths relative to the dataset folder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["SPLITS", "DatalistError", "load_datalist", "resolve_items", "drop_unreadable"]

SPLITS = ("labeled", "unlabeled", "validation", "test")
PATH_KEYS = ("image", "label")


class DatalistError(ValueError):
    """A datalist with unusable items; ``problems`` holds (file, reason) pairs, the message one line each.

    Args:
        path: the datalist.
        problems: (file, reason) of every unusable item.
    """

    def __init__(self, path: str | os.PathLike, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  {file}: {reason}" for file, reason in self.problems)
        super().__init__(
            f"{path}: {len(self.problems)} problem(s) in the dataset (scripts/check_data.py lists them too):\n{lines}"
        )


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


def resolve_items(
    items: list[dict], dataset_dir: str | os.PathLike, require_label: bool = False, split: str = ""
) -> list[dict]:
    """Copies of ``items`` with ``image``/``label`` joined to ``dataset_dir`` (absolute paths are kept).

    Args:
        items: datalist items of one split.
        dataset_dir: the folder the datalist's paths are relative to.
        require_label: the split must be annotated: raise ``ValueError`` when it is empty or an item has no
            ``label``.
        split: the split's name, for error messages.
    """
    root = Path(dataset_dir)
    if require_label and not items:
        raise ValueError(f"the {split or 'annotated'} split of the datalist is empty (dataset_dir {root})")
    resolved = []
    for k, item in enumerate(items):
        if require_label and "label" not in item:
            raise ValueError(f"item {k} ({item.get('image')}) has no 'label' but this split must be annotated")
        resolved.append({key: str(root / value) if key in PATH_KEYS else value for key, value in item.items()})
    return resolved


def drop_unreadable(items: list[dict]) -> list[dict]:
    """Items whose image reads as whole-body NM; each one dropped is logged with the file and the reason.

    For unlabeled scans, where one corrupt file among thousands should cost that file, not the run. Every
    refusal of :func:`~malignet_bundle.data.nm_dicom.read_nm_views` counts (colour, bit depth, frame count,
    size, short pixel data, constant frames, repeated view codes), so the pixels are decoded here.
    """
    from malignet_bundle.data.nm_dicom import DicomInputError, read_nm_views

    kept = []
    for item in items:
        try:
            read_nm_views(item["image"])
        except DicomInputError as e:
            logger.warning("skipping unlabeled item: %s", e)
            continue
        kept.append(item)
    return kept
