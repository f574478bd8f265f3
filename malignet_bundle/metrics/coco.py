"""COCO mask AP (AP@[.5:.95], AP50, AP75), class-aware, computed by pycocotools' ``COCOeval`` (iouType "segm").

The ground truth and the detections are built in memory from the records' RLE masks (one COCO category per
lesion class, one COCO image per record). pycocotools averages over the categories that have ground truth;
where it has nothing to average (-1: no ground-truth lesion at all, or none of a class in the per-class
values) the value is nan, since AP is undefined there. With ground truth but no prediction at all the AP
is 0.0 (pycocotools' own answer; it cannot load an empty detection list, so this case is short-cut).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

from pycocotools import mask as mask_utils

from malignet_bundle.metrics.records import ImageRecord

__all__ = ["coco_ap"]


def _nan_if_undefined(value: float) -> float:
    return float(value) if value >= 0 else math.nan


def coco_ap(records: Sequence[ImageRecord], num_classes: int, max_detections: int = 100) -> dict[str, Any]:
    """COCO mask AP of ``records`` through pycocotools.

    Args:
        records: per-image records (:func:`~malignet_bundle.metrics.records.image_records`).
        num_classes: lesion classes 1..C, the COCO categories.
        max_detections: COCO's ``maxDets`` for AP (the highest-scoring detections per image kept); 100, the
            COCO default, is also the detector's per-image output limit, so nothing is dropped.

    Returns:
        ``ap`` (AP@[.5:.95]), ``ap50``, ``ap75`` and ``per_class`` (``{class: {"ap", "ap50"}}``); nan where
        undefined (see the module docstring).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    categories = list(range(1, num_classes + 1))
    images, gt, dets = [], [], []
    for i, r in enumerate(records, start=1):
        images.append({"id": i, "height": max(r.height, 1), "width": max(r.width, 1)})
        for rle, label in zip(r.gt_rles, r.gt_labels, strict=True):
            gt.append(
                {
                    "id": len(gt) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for rle, label, score in zip(r.pred_rles, r.pred_labels, r.pred_scores, strict=True):
            dets.append({"image_id": i, "category_id": int(label), "segmentation": rle, "score": float(score)})
    nan_per_class = {c: {"ap": math.nan, "ap50": math.nan} for c in categories}
    if not gt:
        return {"ap": math.nan, "ap50": math.nan, "ap75": math.nan, "per_class": nan_per_class}
    if not dets:
        support = {int(a["category_id"]) for a in gt}
        per_class = {c: ({"ap": 0.0, "ap50": 0.0} if c in support else nan_per_class[c]) for c in categories}
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": per_class}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": gt,
            "categories": [{"id": c, "name": str(c)} for c in categories],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(dets), iouType="segm")
        # COCOeval sorts maxDets and reports AP at maxDets[2]: keep the list ascending with ours last
        evaluation.params.maxDets = [min(1, max_detections), min(10, max_detections), max_detections]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [IoU threshold (0: 0.5), recall, category, area range (0: all), maxDets (-1: max_detections)]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, c in enumerate(evaluation.params.catIds):
        values = precision[:, :, k]
        defined = values > -1
        per_class[int(c)] = {
            "ap": float(values[defined].mean()) if defined.any() else math.nan,
            "ap50": float(values[0][defined[0]].mean()) if defined[0].any() else math.nan,
        }
    ap, ap50, ap75 = (_nan_if_undefined(v) for v in evaluation.stats[:3])
    return {"ap": ap, "ap50": ap50, "ap75": ap75, "per_class": per_class}
