"""Pixel-level Dice, precision and sensitivity, pixels summed over all images (micro average).

Class-agnostic: the union of the predicted lesion masks against the union of the ground-truth lesion masks.
Per class: the semantic maps of :func:`~malignet_bundle.metrics.records.image_records`, where an overlapped
pixel belongs to the highest-scoring prediction and to the first listed ground-truth lesion. A ratio with a
zero denominator is 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from malignet_bundle.metrics.lesion import safe_ratio
from malignet_bundle.metrics.records import ImageRecord

__all__ = ["pixel_scores", "pixel_metrics"]


def pixel_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, precision and sensitivity from pixel counts."""
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn),
        "precision": safe_ratio(tp, tp + fp),
        "sensitivity": safe_ratio(tp, tp + fn),
    }


def pixel_metrics(records: Sequence[ImageRecord], num_classes: int | None = None) -> dict[str, Any]:
    """Pixel scores of the lesion unions and, with ``num_classes``, of each class's semantic map.

    Args:
        records: per-image records (:func:`~malignet_bundle.metrics.records.image_records`).
        num_classes: lesion classes 1..C for ``per_class``; None leaves it out.

    Returns:
        ``dice``, ``precision``, ``sensitivity`` (class-agnostic) and, with ``num_classes``, ``per_class``
        (``{class: {"dice", "precision", "sensitivity", "support"}}``, support = ground-truth pixels).
    """
    tp, fp, fn = (sum(getattr(r, k) for r in records) for k in ("pixel_tp", "pixel_fp", "pixel_fn"))
    result: dict[str, Any] = pixel_scores(tp, fp, fn)
    if num_classes is not None:
        per_class = {}
        for c in range(1, num_classes + 1):
            counts = [r.pixel_class.get(c, (0, 0, 0)) for r in records]
            ctp, cfp, cfn = (sum(x[i] for x in counts) for i in range(3))
            per_class[c] = {**pixel_scores(ctp, cfp, cfn), "support": ctp + cfn}
        result["per_class"] = per_class
    return result
