"""Class-agnostic FROC: lesion sensitivity against false positives per image over a sweep of score thresholds.

A prediction is a true positive when the greedy score-ordered matching (mask IoU ≥ threshold, one-to-one,
:func:`~malignet_bundle.metrics.lesion.match_lesions`) pairs it with a ground-truth lesion, else a false
positive. Sensitivity = true positives / ground-truth lesions (0.0 without ground truth); false positives
per image = false positives / images (every image counts, with or without lesions). The sensitivity at a
rate is the highest one reached with at most that many false positives per image (no interpolation), 0.0
if none; the CPM score is the mean over the rates 1/8 … 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from malignet_bundle.metrics.records import ImageRecord

__all__ = ["FROC_RATES", "froc"]

FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc(records: Sequence[ImageRecord], rates: Sequence[float] = FROC_RATES) -> dict[str, Any]:
    """FROC curve and operating points of ``records``.

    Args:
        records: per-image records (:func:`~malignet_bundle.metrics.records.image_records`).
        rates: false positives per image at which to report the sensitivity.

    Returns:
        ``operating_points`` (``{rate: sensitivity}``), ``cpm`` (their mean), the curve ``fp_per_image``,
        ``sensitivity`` and ``thresholds`` (one point per distinct score, descending threshold, so ascending
        false positives), ``ground_truth`` (lesions) and ``images``.
    """
    # One matching per image serves every threshold: the greedy matching visits predictions in descending
    # score and each one's match depends only on those scored above it, so the matching of the predictions
    # kept at a threshold is exactly the full matching restricted to them.
    scores = np.concatenate([r.pred_scores for r in records]).astype(float) if records else np.zeros(0)
    hits = np.concatenate([r.matched for r in records]) if records else np.zeros(0, dtype=bool)
    n_truth, n_images = sum(len(r.gt_labels) for r in records), max(len(records), 1)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    # a threshold keeps all predictions of equal score or none: points only at the end of each run of ties
    last = np.append(scores[1:] != scores[:-1], True) if len(scores) else np.zeros(0, dtype=bool)
    tp, fp = np.cumsum(hits)[last], np.cumsum(~hits)[last]
    sensitivity = tp / n_truth if n_truth else np.zeros(len(tp))
    fp_per_image = fp / n_images
    points = {}
    for rate in rates:
        reachable = fp_per_image <= rate
        points[float(rate)] = float(sensitivity[reachable].max()) if reachable.any() else 0.0
    return {
        "operating_points": points,
        "cpm": float(np.mean(list(points.values()))) if points else 0.0,
        "fp_per_image": fp_per_image.astype(float).tolist(),
        "sensitivity": np.asarray(sensitivity, dtype=float).tolist(),
        "thresholds": scores[last].tolist(),
        "ground_truth": int(n_truth),
        "images": len(records),
    }
