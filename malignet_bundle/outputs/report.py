"""JSON lesion report of one study (design §8): what a clinician's tool or a script reads.

Coordinates are whole-body stored-pixel coordinates of the source frame: x along columns, y along rows, origin
at the top-left pixel; boxes ``[x0, y0, x1, y1]`` have exclusive maxima. Millimetres are pixel indices times
the header's PixelSpacing (row spacing for y, column spacing for x), measured from the top-left pixel's
centre. Masks are COCO run-length encodings (``pycocotools.mask.decode`` reads them back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from malignet_bundle.data.annotations import write_json_atomic
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.outputs.prediction import StudyPrediction

__all__ = ["build_report", "write_report"]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def build_report(
    study: StudyPrediction,
    class_map: ClassMap,
    malignant_label: int = 1,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as plain JSON types.

    Args:
        study: lesions of the study in whole-body stored-pixel coordinates.
        class_map: label → class name.
        malignant_label: the class whose lesions make the metastasis verdict positive.
        model: what produced the lesions (name, version, checkpoint), copied into the report.
    """
    row_mm, col_mm = (float(v) for v in study.spacing)
    sources, views, lesions = [], [], []
    for view, path, ds in zip(study.views, study.source_paths, study.datasets, strict=True):
        sources.append(
            {
                "path": str(path),
                "view": view.view,
                "frame_index": int(view.frame_index),
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
                "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            }
        )
        views.append({"view": view.view, "chest_box": [float(v) for v in view.chest_box], "lesions": len(view.labels)})
        order = np.argsort(-np.asarray(view.scores), kind="stable")
        boxes = view.boxes
        for rank, k in enumerate(order, start=1):
            mask = view.masks[k]
            rows, cols = np.nonzero(mask)
            area = int(rows.size)
            cy, cx = (float(rows.mean()), float(cols.mean())) if area else (float("nan"), float("nan"))
            label = int(view.labels[k])
            lesions.append(
                {
                    "id": f"{view.view}-{rank}",
                    "view": view.view,
                    "class_label": label,
                    "class_name": class_map.name(label),
                    "score": round(float(view.scores[k]), 4),
                    "box": [float(v) for v in boxes[k]],
                    "centroid_px": [cx, cy],
                    "centroid_mm": [cx * col_mm, cy * row_mm],
                    "area_px": area,
                    "area_mm2": area * row_mm * col_mm,
                    "mask": _rle(mask),
                }
            )
    first = study.datasets[0] if study.datasets else {}
    malignant = [les["id"] for les in lesions if les["class_label"] == malignant_label]
    return {
        "study_id": study.study_id,
        "patient_id": str(first.get("PatientID", "")) if first else "",
        "study_instance_uid": str(first.get("StudyInstanceUID", "")) if first else "",
        "pixel_spacing_mm": [row_mm, col_mm],
        "coordinates": "whole-body stored pixels: x = column, y = row, origin top-left; boxes exclusive max",
        "model": dict(model) if model else None,
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
) -> None:
    """Write :func:`build_report` to ``path`` atomically."""
    write_json_atomic(build_report(study, class_map, malignant_label, model), path)
