"""JSON lesion report of one study: what a clinician's tool, a script or an audit reads.

Why JSON: the report is the one output that needs no DICOM or imaging library to read, so it carries
everything about each lesion (class, score, where, how big, its mask) and the study's metastasis verdict,
with plain JSON types only.

Conventions (also written into the report under ``"conventions"``):

* Pixel coordinates are those of the stored source frame (whole body, not the chest crop; a posterior view
  is *not* mirrored): x = column, y = row, origin at the top-left pixel; pixel ``(x, y)`` covers
  ``[x, x + 1) × [y, y + 1)``, so boxes ``[x0, y0, x1, y1]`` have exclusive maxima.
* Centroids are means of pixel indices, so a one-pixel lesion at column 3, row 5 has centroid ``[3, 5]``.
  Millimetres are pixel index × spacing: ``x_mm = x × column spacing``, ``y_mm = y × row spacing``, measured
  from the centre of the top-left pixel. Areas in mm² are pixel counts × row spacing × column spacing.
* Masks are COCO run-length encodings of the whole frame (``pycocotools.mask.decode(lesion["mask"])`` gives
  the (rows, cols) mask back).
* Lesion ids are ``"<view>-<k>"``, ``k`` the 1-based index of the lesion in that view's prediction (instance
  ``k`` of the instance-label image); lesions are listed view by view (the study's order) and by descending
  score within a view.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.annotations import json_rle, to_json_types
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.outputs.prediction import StudyPrediction

__all__ = ["REPORT_FORMAT", "MASK_ENCODINGS", "build_report", "write_report"]

REPORT_FORMAT = {"name": "malignet-lesion-report", "version": 1}
MASK_ENCODINGS = ("coco-rle", None)

_CONVENTIONS = {
    "pixels": "stored source frame, x = column, y = row, origin top-left pixel, posterior view not mirrored",
    "box": "[x0, y0, x1, y1] in pixels, exclusive maxima",
    "centroid_px": "[x, y] mean pixel index",
    "centroid_mm": "[x * column spacing, y * row spacing], from the centre of the top-left pixel",
    "area_mm2": "pixel count * row spacing * column spacing",
    "mask": "COCO RLE of the whole frame (pycocotools.mask.decode)",
    "pixel_spacing_mm": "[row spacing, column spacing] (DICOM PixelSpacing order)",
}


def _sources(study: StudyPrediction) -> list[dict[str, Any]]:
    """One entry per distinct source file (a two-view file is listed once)."""
    sources: dict[str, dict[str, Any]] = {}
    for path, ds in zip(study.source_paths, study.datasets, strict=True):
        key = os.fspath(path)
        if key not in sources:
            sources[key] = {
                "path": key,
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                "sop_class_uid": str(ds.get("SOPClassUID", "")),
                "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
                "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
                "patient_id": str(ds.get("PatientID", "")),
                "number_of_frames": int(ds.get("NumberOfFrames", 1) or 1),
            }
    return list(sources.values())


def build_report(
    study: StudyPrediction,
    class_map: ClassMap,
    malignant_label: int = 1,
    model: Mapping[str, Any] | None = None,
    mask_encoding: str | None = "coco-rle",
) -> dict[str, Any]:
    """Build the lesion report of ``study`` as plain JSON types (conventions: module docstring).

    Args:
        study: lesions of the study in whole-body stored-pixel coordinates.
        class_map: label → class name.
        malignant_label: the class whose lesions make the metastasis verdict positive.
        model: what produced the lesions (name, version, checkpoint, …), copied into the report.
        mask_encoding: ``"coco-rle"`` for a COCO RLE mask per lesion, ``None`` to leave masks out.

    Returns:
        ``{"format", "study_id", "patient_id", "study_instance_uid", "pixel_spacing_mm", "conventions",
        "model", "classes", "sources", "views", "lesions", "metastasis"}``; ``metastasis`` is
        ``{"positive": bool, "lesion_ids": [...]}`` listing the lesions of class ``malignant_label``.

    Raises:
        ValueError: unknown ``mask_encoding``, or a view whose masks, labels and scores disagree in number.
        KeyError: ``malignant_label`` or a lesion label outside the class map.
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {mask_encoding!r}")
    class_map.name(malignant_label)  # KeyError for a label the class map does not have
    row_mm, col_mm = (float(v) for v in study.spacing)
    sources = _sources(study)
    views, lesions = [], []
    for view, path, ds in zip(study.views, study.source_paths, study.datasets, strict=True):
        masks = np.asarray(view.masks, dtype=bool)
        labels, scores = np.asarray(view.labels), np.asarray(view.scores, dtype=np.float64)
        if not len(masks) == len(labels) == len(scores):
            raise ValueError(f"{view.view}: {len(masks)} masks, {len(labels)} labels, {len(scores)} scores")
        views.append(
            {
                "view": view.view,
                "source_path": os.fspath(path),
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                "frame_index": int(view.frame_index),
                "rows": int(np.shape(view.image)[-2]),
                "columns": int(np.shape(view.image)[-1]),
                "chest_box": [float(v) for v in view.chest_box],
                "lesion_count": len(masks),
            }
        )
        for k in np.argsort(-scores, kind="stable"):
            mask = masks[k]
            rows, cols = np.nonzero(mask)
            area = int(rows.size)
            label = int(labels[k])
            lesion: dict[str, Any] = {
                "id": f"{view.view}-{int(k) + 1}",
                "view": view.view,
                "class_label": label,
                "class_name": class_map.name(label),
                "score": float(scores[k]),
                "box": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if area else None,
                "centroid_px": [float(cols.mean()), float(rows.mean())] if area else None,
                "centroid_mm": [float(cols.mean()) * col_mm, float(rows.mean()) * row_mm] if area else None,
                "area_px": area,
                "area_mm2": area * row_mm * col_mm,
            }
            if mask_encoding == "coco-rle":
                lesion["mask"] = json_rle(mask)
            lesions.append(lesion)
    malignant = [lesion["id"] for lesion in lesions if lesion["class_label"] == int(malignant_label)]
    return {
        "format": dict(REPORT_FORMAT),
        "study_id": str(study.study_id),
        "patient_id": sources[0]["patient_id"] if sources else "",
        "study_instance_uid": sources[0]["study_instance_uid"] if sources else "",
        "pixel_spacing_mm": [row_mm, col_mm],
        "conventions": dict(_CONVENTIONS),
        "model": to_json_types(dict(model)) if model is not None else None,
        "classes": {str(label): name for label, name in enumerate(class_map.names, start=1)},
        "sources": sources,
        "views": views,
        "lesions": lesions,
        "metastasis": {"positive": bool(malignant), "lesion_ids": malignant},
    }


def write_report(
    study: StudyPrediction,
    class_map: ClassMap,
    path: str | os.PathLike,
    malignant_label: int = 1,
    model: Mapping[str, Any] | None = None,
    mask_encoding: str | None = "coco-rle",
) -> Path:
    """Write :func:`build_report` to ``path`` as JSON, atomically (temporary file + rename); returns the path.

    Args:
        study: lesions of the study.
        class_map: label → class name.
        path: the JSON file to write (folders are created).
        malignant_label: the class whose lesions make the metastasis verdict positive.
        model: what produced the lesions, copied into the report.
        mask_encoding: ``"coco-rle"`` or ``None`` (no masks).
    """
    write_json_atomic(build_report(study, class_map, malignant_label, model, mask_encoding), path)
    return Path(path)
