"""The evaluation of thesis §3.8 (Tables 4–7, Fig. 17) plus COCO AP, FROC and pixel-level scores.

Every family is a plain function on per-image records (:func:`~malignet_bundle.metrics.records.image_records`
builds them from per-image prediction and target dicts, matching each image once), :func:`evaluate_lesions`
runs them all, and :class:`LesionMetrics` is the ignite metric the evaluators attach.

- Matching: prediction ↔ ground truth when mask IoU ≥ ``iou_threshold`` (0.5), one-to-one, greedy in
  descending score (:func:`~malignet_bundle.metrics.lesion.match_pairs`). ``matching`` picks the rule of the
  class-aware families (Table 4, Table 7, the mean-F1 curve): ``"class_agnostic"`` (default: match on IoU,
  then check the class) or ``"per_class"`` (COCO-style: only a prediction of the lesion's class can take
  it). Table 5 (localization) and Table 6 (classification of the localized lesions) ignore the class by
  definition and always use the class-agnostic pairs. Table 4's means are also reported under both rules,
  whatever ``matching`` is, as ``mean_<precision|sensitivity|f1>_<rule>_matching``, so a comparison can read
  how much of a score is the rule.
- Table 4 (:func:`lesion_segmentation_metrics`): per class c, precision = predictions of c matched to a ground
  truth of c / predictions of c; sensitivity = the same count / ground-truth lesions of c; F1; means weighted
  by ground-truth support.
- Table 5 (:func:`localization_metrics`): the same with classes ignored.
- Table 6 / Fig. 17 (:func:`classification_metrics`): on matched pairs, one-vs-rest accuracy, precision,
  sensitivity, specificity, F1 per class, their means weighted by ground-truth support among the pairs, the
  overall accuracy (trace / pairs), and the confusion matrix (rows ground truth, columns prediction) as counts
  and row-normalised.
- Table 7 (:func:`metastasis_metrics`): an image is predicted positive with ≥ 1 malignant prediction. A
  ground-truth positive image (≥ 1 malignant lesion) is TP when a malignant prediction is matched to a
  malignant lesion, else FN; a negative image is FP with any malignant prediction, else TN. Per patient (all
  images of the patient, e.g. anterior + posterior): positive if any image is; TP if any image is TP, else
  FN; a negative patient is FP if any image has a malignant prediction, else TN.
- COCO AP@[.5:.95], AP50, AP75 of the masks, class-aware, by pycocotools (:func:`~.coco.coco_ap`).
- FROC, class-agnostic: sensitivity at 1/8 … 8 false positives per image and their mean, CPM
  (:func:`~.froc.froc`).
- Pixel level: Dice, precision, sensitivity of the union of predicted vs ground-truth lesion masks, pixels
  summed over all images; per class on semantic maps (:func:`~.pixel.pixel_metrics`).

Operating point: Tables 4–7 and the pixel scores describe the detector as deployed, so they count only the
predictions scoring at least the records' ``score_threshold`` (Table 11: 0.7). COCO AP and FROC rank the
predictions by score, so they use every prediction the network returned: evaluate with a low network floor
(``evaluate.json``: 0.05) to get the whole ranking, instead of the part above 0.7. With an
``operating_threshold`` (the model's own, chosen on validation: :mod:`~malignet_bundle.metrics.operating_point`)
the threshold-dependent families are computed a second time at it, from the same matching, under the prefix
``operating_``; the unprefixed ones stay at the records' threshold (the thesis protocol).

Zero denominators: every ratio whose denominator is zero is 0.0 (precision without predictions, sensitivity
without ground truth, F1 with precision + sensitivity = 0, the means without support, …). The one exception
is COCO AP, nan where pycocotools returns -1 (no ground-truth lesion at all; per class: none of that class),
because AP is undefined there; with ground truth but no prediction it is 0.0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from malignet_bundle.metrics.coco import coco_ap
from malignet_bundle.metrics.froc import FROC_RATES, froc
from malignet_bundle.metrics.lesion import (
    MATCHING_RULES,
    LesionCounts,
    check_matching,
    class_weighted_f1,
    f1_score,
    match_pairs,
    rle_iou,
    safe_ratio,
)
from malignet_bundle.metrics.pixel import pixel_metrics, pixel_scores
from malignet_bundle.metrics.records import ImageRecord, image_records

__all__ = [
    "FROC_RATES",
    "ImageRecord",
    "EvaluationResult",
    "image_records",
    "MATCHING_RULES",
    "rematch_records",
    "lesion_segmentation_metrics",
    "localization_metrics",
    "classification_metrics",
    "metastasis_metrics",
    "coco_ap",
    "froc",
    "pixel_metrics",
    "per_image_rows",
    "SCORE_THRESHOLDS",
    "score_threshold_curve",
    "THRESHOLDED_FAMILIES",
    "thresholded_metrics",
    "evaluate_records",
    "evaluate_lesions",
    "LesionMetrics",
]

OUTCOMES = ("TP", "FP", "FN", "TN")
# the families that depend on the operating point (Tables 4–7, pixel scores); AP, FROC and the curve do not
THRESHOLDED_FAMILIES = ("segmentation", "localization", "classification", "metastasis", "pixel")
# operating points of the mean-F1 curve: 0.05, 0.10, …, 0.95
SCORE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class EvaluationResult:
    """One evaluation.

    Attributes:
        scalars: flat ``{name: float}`` (MLflow-safe names), what :class:`LesionMetrics` returns.
        detail: per-family nested results: ``images``, ``segmentation``, ``localization``, ``classification``
            (with ``confusion`` and ``confusion_normalised``), ``metastasis``, ``coco``, ``froc`` (with the
            curve), ``pixel``, ``score_threshold_curve``; with an operating threshold also ``operating_point``
            (``threshold`` and the :data:`THRESHOLDED_FAMILIES` at it).
        per_image: one row per image for a CSV (see :func:`per_image_rows`), at the operating threshold when
            there is one.
    """

    scalars: dict[str, float]
    detail: dict[str, Any]
    per_image: list[dict[str, Any]]


def rematch_records(records: Sequence[ImageRecord], matching: str, iou_threshold: float = 0.5) -> list[ImageRecord]:
    """``records`` with their pairs matched again under the ``matching`` rule, from their run-length encodings.

    Args:
        records: per-image records of :func:`~malignet_bundle.metrics.records.image_records` (class-agnostic
            pairs, every prediction kept).
        matching: one of :data:`~malignet_bundle.metrics.lesion.MATCHING_RULES`; ``"class_agnostic"``
            returns the records as they are.
        iou_threshold: the smallest mask IoU of a match (the one the records were matched with).

    Returns:
        New records (the inputs are not modified); only ``pairs`` differs.

    Raises:
        ValueError: for an unknown rule.
    """
    if check_matching(matching) == "class_agnostic":
        return list(records)
    return [
        replace(
            r,
            pairs=match_pairs(
                rle_iou(r.pred_rles, r.gt_rles), r.pred_scores, r.pred_labels, r.gt_labels, iou_threshold, matching
            ),
        )
        for r in records
    ]


def _with_pairs(records: Sequence[ImageRecord], like: Sequence[ImageRecord]) -> list[ImageRecord]:
    """``records`` with the pairs of ``like`` (same images, every prediction): matching ignores the threshold."""
    return [replace(r, pairs=other.pairs) for r, other in zip(records, like, strict=True)]


def lesion_segmentation_metrics(records: Sequence[ImageRecord], num_classes: int) -> dict[str, Any]:
    """Table 4: per-class precision, sensitivity, F1 and their ground-truth-weighted means.

    Args:
        records: per-image records.
        num_classes: lesion classes 1..C.

    Returns:
        ``mean_precision``, ``mean_sensitivity``, ``mean_f1`` and ``per_class`` (``{class: {"precision",
        "sensitivity", "f1", "support", "predicted", "matched"}}``).
    """
    counts = LesionCounts(num_classes)
    for r in records:
        counts.add(r.pred_labels, r.gt_labels, r.pairs)
    scores = class_weighted_f1(counts)
    per_class = {
        c: {
            "precision": float(scores["precision"][c - 1]),
            "sensitivity": float(scores["sensitivity"][c - 1]),
            "f1": float(scores["f1"][c - 1]),
            "support": int(counts.ground_truth[c]),
            "predicted": int(counts.predicted[c]),
            "matched": int(counts.matched[c]),
        }
        for c in range(1, num_classes + 1)
    }
    return {"per_class": per_class, **{k: v for k, v in scores.items() if k.startswith("mean_")}}


def localization_metrics(records: Sequence[ImageRecord]) -> dict[str, float]:
    """Table 5: precision (matched / predictions), sensitivity (matched / ground truth) and F1, classes ignored."""
    matched = sum(len(r.pairs) for r in records)
    precision = safe_ratio(matched, sum(len(r.pred_labels) for r in records))
    sensitivity = safe_ratio(matched, sum(len(r.gt_labels) for r in records))
    return {"precision": precision, "sensitivity": sensitivity, "f1": f1_score(precision, sensitivity)}


def classification_metrics(records: Sequence[ImageRecord], num_classes: int) -> dict[str, Any]:
    """Table 6 / Fig. 17: one-vs-rest scores per class on matched lesions and the confusion matrix.

    Args:
        records: per-image records.
        num_classes: lesion classes 1..C.

    Returns:
        ``per_class`` (``{class: {"accuracy", "precision", "sensitivity", "specificity", "f1", "support",
        "tp", "fp", "fn", "tn"}}``), their support-weighted ``mean_*``, the overall ``accuracy``, and
        ``confusion`` / ``confusion_normalised`` ((C, C) arrays, rows ground truth, columns prediction, row i
        is class i + 1).
    """
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for r in records:
        for p, g in r.pairs:
            confusion[r.gt_labels[g] - 1, r.pred_labels[p] - 1] += 1
    total = int(confusion.sum())
    per_class = {}
    for i in range(num_classes):
        tp = int(confusion[i, i])
        fn, fp = int(confusion[i].sum()) - tp, int(confusion[:, i].sum()) - tp
        tn = total - tp - fn - fp
        precision, sensitivity = safe_ratio(tp, tp + fp), safe_ratio(tp, tp + fn)
        per_class[i + 1] = {
            "accuracy": safe_ratio(tp + tn, total),
            "precision": precision,
            "sensitivity": sensitivity,
            "specificity": safe_ratio(tn, tn + fp),
            "f1": f1_score(precision, sensitivity),
            "support": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }
    support = confusion.sum(1)
    weights = support / support.sum() if support.sum() else np.zeros(num_classes)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    means = {
        f"mean_{m}": float(sum(w * per_class[c][m] for w, c in zip(weights, per_class, strict=True)))
        for m in ("accuracy", "precision", "sensitivity", "specificity", "f1")
    }
    return {
        "per_class": per_class,
        **means,
        "accuracy": safe_ratio(np.trace(confusion), total),
        "confusion": confusion,
        "confusion_normalised": normalised,
    }


def _outcome_scores(outcomes: Sequence[str]) -> dict[str, float]:
    tp, fp, fn, tn = (sum(o == k for o in outcomes) for k in OUTCOMES)
    precision, recall = safe_ratio(tp, tp + fp), safe_ratio(tp, tp + fn)
    return {
        "accuracy": safe_ratio(tp + tn, len(outcomes)),
        "precision": precision,
        "recall": recall,
        "specificity": safe_ratio(tn, tn + fp),
        "f1": f1_score(precision, recall),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def metastasis_outcome(record: ImageRecord, malignant_label: int = 1) -> str:
    """Table 7 outcome of one image: ``"TP"``, ``"FP"``, ``"FN"`` or ``"TN"``."""
    r, m = record, malignant_label
    if (r.gt_labels == m).any():
        hit = any(r.pred_labels[p] == m and r.gt_labels[g] == m for p, g in r.pairs)
        return "TP" if hit else "FN"
    return "FP" if (r.pred_labels == m).any() else "TN"


def _patient_key(record: ImageRecord, index: int) -> str:
    return record.patient_id if record.patient_id is not None else f"image_{index}"


def metastasis_metrics(records: Sequence[ImageRecord], malignant_label: int = 1) -> dict[str, Any]:
    """Table 7: metastasis prediction per image and per patient.

    Args:
        records: per-image records (their ``patient_id`` groups the images of a patient; an image without
            one is its own patient, named ``image_<index>``).
        malignant_label: the class of metastases.

    Returns:
        ``image`` and ``patient`` (each accuracy, precision, recall, specificity, F1 and the tp/fp/fn/tn
        counts), ``outcomes`` (per image) and ``patients`` (``{patient id: outcome}``).
    """
    outcomes = [metastasis_outcome(r, malignant_label) for r in records]
    by_patient: dict[str, list[str]] = {}
    for i, (r, o) in enumerate(zip(records, outcomes, strict=True)):
        by_patient.setdefault(_patient_key(r, i), []).append(o)
    patients = {}
    for patient, image_outcomes in by_patient.items():
        if any(o in ("TP", "FN") for o in image_outcomes):  # ground-truth positive patient
            patients[patient] = "TP" if "TP" in image_outcomes else "FN"
        else:
            patients[patient] = "FP" if "FP" in image_outcomes else "TN"
    return {
        "image": _outcome_scores(outcomes),
        "patient": _outcome_scores(list(patients.values())),
        "outcomes": outcomes,
        "patients": patients,
    }


def per_image_rows(
    records: Sequence[ImageRecord], malignant_label: int = 1, class_records: Sequence[ImageRecord] | None = None
) -> list[dict[str, Any]]:
    """One row per image for a CSV.

    Columns: ``index``, ``image``, ``patient_id``, ``ground_truth`` / ``predicted`` (lesions),
    ``localization_tp`` (matched pairs) / ``localization_fp`` / ``localization_fn``, ``matched_same_class``,
    ``malignant_ground_truth`` / ``malignant_predicted`` (lesions), ``metastasis`` (TP/FP/FN/TN), ``pixel_dice``.

    Args:
        records: per-image records with class-agnostic pairs (the localization columns).
        malignant_label: the class of metastases.
        class_records: the same images with the pairs of the class-aware rule (``matched_same_class`` and
            ``metastasis``); default: ``records``.
    """
    class_records = records if class_records is None else class_records
    rows = []
    for i, (r, c) in enumerate(zip(records, class_records, strict=True)):
        matched = len(r.pairs)
        rows.append(
            {
                "index": i,
                "image": r.image_id,
                "patient_id": r.patient_id or "",
                "ground_truth": len(r.gt_labels),
                "predicted": len(r.pred_labels),
                "localization_tp": matched,
                "localization_fp": len(r.pred_labels) - matched,
                "localization_fn": len(r.gt_labels) - matched,
                "matched_same_class": sum(int(c.pred_labels[p] == c.gt_labels[g]) for p, g in c.pairs),
                "malignant_ground_truth": int((r.gt_labels == malignant_label).sum()),
                "malignant_predicted": int((r.pred_labels == malignant_label).sum()),
                "metastasis": metastasis_outcome(c, malignant_label),
                "pixel_dice": pixel_scores(r.pixel_tp, r.pixel_fp, r.pixel_fn)["dice"],
            }
        )
    return rows


def score_threshold_curve(
    records: Sequence[ImageRecord],
    num_classes: int,
    thresholds: Sequence[float] = SCORE_THRESHOLDS,
    class_records: Sequence[ImageRecord] | None = None,
) -> dict[str, Any]:
    """Mean F1 (Table 4) and localization F1 (Table 5) with the operating point moved to each threshold.

    Greedy matching in descending score makes each point the same as matching only the predictions above it,
    so one matching per image serves the whole curve. Points below the network's own score floor see no
    more predictions than the floor does.

    Args:
        records: per-image records holding every prediction (their own ``score_threshold`` is ignored).
        num_classes: lesion classes 1..C.
        thresholds: the operating points, ascending.
        class_records: the same images with the pairs of the class-aware rule, for the mean F1; default:
            ``records``.

    Returns:
        ``thresholds``, ``mean_f1`` and ``localization_f1`` (lists, one value per threshold), and
        ``best_threshold`` / ``best_mean_f1``: the point of highest mean F1 (the lowest threshold on ties).
        The best point is chosen on these same records, so it is optimistic.
    """
    class_records = records if class_records is None else class_records
    mean_f1, localization_f1 = [], []
    for threshold in thresholds:
        at = [replace(r, score_threshold=threshold).at_operating_point() for r in records]
        at_class = [replace(r, score_threshold=threshold).at_operating_point() for r in class_records]
        mean_f1.append(float(lesion_segmentation_metrics(at_class, num_classes)["mean_f1"]))
        localization_f1.append(float(localization_metrics(at)["f1"]))
    best = int(np.argmax(mean_f1)) if mean_f1 else 0
    return {
        "thresholds": [float(t) for t in thresholds],
        "mean_f1": mean_f1,
        "localization_f1": localization_f1,
        "best_threshold": float(thresholds[best]) if mean_f1 else float("nan"),
        "best_mean_f1": mean_f1[best] if mean_f1 else 0.0,
    }


def _rate_name(rate: float) -> str:
    return f"{rate:g}"


def thresholded_metrics(
    records: Sequence[ImageRecord],
    num_classes: int,
    malignant_label: int = 1,
    per_class_records: Sequence[ImageRecord] | None = None,
    matching: str = "class_agnostic",
    iou_threshold: float = 0.5,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The :data:`THRESHOLDED_FAMILIES` (Tables 4–7, pixel scores) at the records' own ``score_threshold``.

    Args:
        records: per-image records with class-agnostic pairs (their ``score_threshold`` is the operating point).
        num_classes: lesion classes 1..C.
        malignant_label: the class of metastases (Table 7).
        per_class_records: the same records with per-class pairs (:func:`rematch_records`), when already at
            hand (the pairs do not depend on the operating point); default: matched here at ``iou_threshold``.
        matching: the rule of Tables 4 and 7 (see the module docstring); Table 4's means are returned under
            both rules either way (``mean_*_<rule>_matching``).
        iou_threshold: the records' IoU threshold, for the per-class pairs when they are not given.

    Returns:
        The scalars (names as in :func:`evaluate_records`, without prefix) and the detail of each family.

    Raises:
        ValueError: for an unknown rule.
    """
    check_matching(matching)
    if per_class_records is None:
        per_class_records = rematch_records(records, "per_class", iou_threshold)
    operating = [r.at_operating_point() for r in records]
    by_rule = {
        "class_agnostic": operating,
        "per_class": [r.at_operating_point() for r in _with_pairs(records, per_class_records)],
    }
    class_aware = by_rule[matching]
    segmentation = lesion_segmentation_metrics(class_aware, num_classes)
    localization = localization_metrics(operating)
    classification = classification_metrics(operating, num_classes)
    metastasis = metastasis_metrics(class_aware, malignant_label)
    pixels = pixel_metrics(operating, num_classes)
    both_rules = {}
    for rule, rule_records in by_rule.items():
        means = segmentation if rule == matching else lesion_segmentation_metrics(rule_records, num_classes)
        both_rules.update({f"{k}_{rule}_matching": means[k] for k in ("mean_precision", "mean_sensitivity", "mean_f1")})
    scalars = {
        **{k: segmentation[k] for k in ("mean_precision", "mean_sensitivity", "mean_f1")},
        **{
            f"class_{c}_{k}": v[k]
            for c, v in segmentation["per_class"].items()
            for k in ("precision", "sensitivity", "f1")
        },
        **{f"localization_{k}": v for k, v in localization.items()},
        "classification_accuracy": classification["accuracy"],
        **{f"classification_{k}": v for k, v in classification.items() if k.startswith("mean_")},
        **{
            f"metastasis_{level}_{k}": metastasis[level][k]
            for level in ("image", "patient")
            for k in ("accuracy", "precision", "recall", "specificity", "f1")
        },
        **{f"pixel_{k}": pixels[k] for k in ("dice", "precision", "sensitivity")},
        **both_rules,
    }
    detail = {
        "matching": matching,
        "segmentation": segmentation,
        "localization": localization,
        "classification": classification,
        "metastasis": {k: v for k, v in metastasis.items() if k != "outcomes"},
        "pixel": pixels,
    }
    return scalars, detail


def evaluate_records(
    records: Sequence[ImageRecord],
    num_classes: int,
    malignant_label: int = 1,
    prefix: str = "",
    max_detections: int = 100,
    operating_threshold: float | None = None,
    matching: str = "class_agnostic",
    iou_threshold: float = 0.5,
) -> EvaluationResult:
    """Every metric family on ``records``.

    Args:
        records: per-image records (:func:`~malignet_bundle.metrics.records.image_records`); their
            ``score_threshold`` is the protocol's operating point (0.7).
        num_classes: lesion classes 1..C.
        malignant_label: the class of metastases (Table 7).
        prefix: put before every scalar name (e.g. ``test_``).
        max_detections: COCO ``maxDets`` (detections kept per image for AP).
        operating_threshold: the model's own operating threshold; when given, the thresholded families are
            also computed at it, from the same matching (:meth:`ImageRecord.with_score_threshold`).
        matching: the rule of the class-aware families (module docstring); ``records`` hold class-agnostic pairs.
        iou_threshold: the IoU the records were matched with, for the per-class pairs.

    Returns:
        The scalars, under these names (after ``prefix``): ``mean_precision``, ``mean_sensitivity``,
        ``mean_f1``, ``class_<c>_precision|sensitivity|f1``, ``localization_precision|sensitivity|f1``,
        ``classification_accuracy``, ``classification_mean_accuracy|precision|sensitivity|specificity|f1``,
        ``metastasis_image_accuracy|precision|recall|specificity|f1``, the same for ``metastasis_patient_``,
        ``ap``, ``ap50``, ``ap75``, ``froc_cpm``, ``froc_sensitivity_at_<rate>`` (rates 0.125 … 8),
        ``pixel_dice|precision|sensitivity``, ``mean_precision|sensitivity|f1_class_agnostic_matching`` and
        ``..._per_class_matching`` (Table 4 under each rule), ``best_mean_f1`` and ``best_mean_f1_threshold``
        (the top of :func:`score_threshold_curve`, optimistic); with ``operating_threshold`` also
        ``operating_threshold`` and every thresholded name again as ``operating_<name>``; the detail; the
        per-image rows (at the operating threshold when given).

    Raises:
        ValueError: for an unknown ``matching``.
    """
    check_matching(matching)
    per_class = rematch_records(records, "per_class", iou_threshold)
    class_aware = per_class if matching == "per_class" else records
    scalars, detail = thresholded_metrics(records, num_classes, malignant_label, per_class, matching)
    coco = coco_ap(records, num_classes, max_detections)  # ranking metrics: every prediction
    curve = froc(records)
    threshold_curve = score_threshold_curve(records, num_classes, class_records=class_aware)
    scalars = {
        **scalars,
        **{k: coco[k] for k in ("ap", "ap50", "ap75")},
        "froc_cpm": curve["cpm"],
        **{f"froc_sensitivity_at_{_rate_name(r)}": s for r, s in curve["operating_points"].items()},
        "best_mean_f1": threshold_curve["best_mean_f1"],
        "best_mean_f1_threshold": threshold_curve["best_threshold"],
    }
    detail = {"images": len(records), **detail, "coco": coco, "froc": curve, "score_threshold_curve": threshold_curve}
    rows = records
    if operating_threshold is not None:
        rows = [r.with_score_threshold(float(operating_threshold)) for r in records]
        operating_scalars, operating_detail = thresholded_metrics(
            rows, num_classes, malignant_label, per_class, matching
        )
        scalars["operating_threshold"] = float(operating_threshold)
        scalars.update({f"operating_{k}": v for k, v in operating_scalars.items()})
        detail["operating_point"] = {"threshold": float(operating_threshold), **operating_detail}
    per_image = per_image_rows(
        [r.at_operating_point() for r in rows],
        malignant_label,
        [r.at_operating_point() for r in _with_pairs(rows, class_aware)],
    )
    return EvaluationResult({f"{prefix}{k}": float(v) for k, v in scalars.items()}, detail, per_image)


def evaluate_lesions(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    malignant_label: int = 1,
    patient_ids: Sequence[str] | None = None,
    prefix: str = "",
    max_detections: int = 100,
    score_threshold: float = 0.0,
    operating_threshold: float | None = None,
    matching: str = "class_agnostic",
) -> EvaluationResult:
    """All metrics of the module docstring on per-image prediction and target dicts.

    Args:
        predictions: per image ``masks`` ((N, 1, H, W) probabilities or (N, H, W) binary), ``labels``, ``scores``.
        targets: per image ``masks`` (G, H, W), ``labels``; optional ``patient_id``, ``image_path``, ``view``.
        num_classes: lesion classes 1..C.
        iou_threshold: the smallest mask IoU of a match.
        malignant_label: the class of metastases (Table 7).
        patient_ids: per image patient (overrides the targets' ``patient_id``; default: one patient per image).
        prefix: put before every scalar name.
        max_detections: COCO ``maxDets``.
        score_threshold: operating point of the thresholded metrics (AP and FROC use every prediction).
        operating_threshold: a second operating point for the thresholded metrics (``operating_`` names).
        matching: the rule of the class-aware families (module docstring).

    Returns:
        The :class:`EvaluationResult` of :func:`evaluate_records`.

    Raises:
        ValueError: for an unknown ``matching``.
    """
    records = image_records(predictions, targets, iou_threshold, patient_ids, score_threshold)
    return evaluate_records(
        records, num_classes, malignant_label, prefix, max_detections, operating_threshold, matching, iou_threshold
    )


class LesionMetrics(Metric):
    """Ignite metric computing :func:`evaluate_records`; ``compute`` returns the flat scalars.

    ``update`` takes ``(predictions, targets)`` or ``(predictions, targets, patient_ids)`` (lists of per-image
    dicts as in :func:`evaluate_lesions`) and keeps a compact record per image (RLE masks, labels, scores,
    matches, pixel counts). ``compute`` gathers the records of every rank (``ignite.distributed.all_gather``
    of picklable objects; under DistributedDataParallel every rank then holds the whole result) and evaluates.

    Ignite puts each scalar into ``engine.state.metrics`` under its own name (``metrics_result_mode="flatten"``,
    so no dict is stored under the metric's name); the full :class:`EvaluationResult`
    stays in :attr:`last_result` for report writers.

    Args:
        num_classes: lesion classes (background excluded).
        iou_threshold: mask IoU for a match.
        malignant_label: class label of metastases (Table 7).
        prefix: prefix of every scalar name (``test_`` keeps them apart from validation metrics).
        output_transform: engine output → (predictions, targets[, patient_ids]).
        device: unused (records stay on the CPU); ignite's argument.
        max_detections: COCO ``maxDets``.
        score_threshold: operating point of the thresholded metrics (Tables 4–7, pixel scores); AP and FROC
            use every prediction.
        operating_threshold: the model's own operating threshold; when given, the thresholded metrics are
            reported at it too, as ``<prefix>operating_<name>`` (``evaluate.json``: at the threshold stored
            with the model, beside the thesis's 0.7 under the plain names).
        matching: the rule of the class-aware families (``"class_agnostic"``, the default, or
            ``"per_class"``); Table 4's means are reported under both rules either way.

    Raises:
        ValueError: for an unknown ``matching``.
    """

    def __init__(
        self,
        num_classes: int = 4,
        iou_threshold: float = 0.5,
        malignant_label: int = 1,
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
        max_detections: int = 100,
        score_threshold: float = 0.0,
        operating_threshold: float | None = None,
        matching: str = "class_agnostic",
    ) -> None:
        self.num_classes, self.iou_threshold, self.score_threshold = num_classes, iou_threshold, score_threshold
        self.matching = check_matching(matching)
        self.operating_threshold = None if operating_threshold is None else float(operating_threshold)
        self.malignant_label, self.prefix, self.max_detections = malignant_label, prefix, max_detections
        self.last_result: EvaluationResult | None = None
        super().__init__(
            output_transform=output_transform,
            device=device,
            skip_unrolling=True,
            metrics_result_mode="flatten",
        )

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        self._records: list[ImageRecord] = []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch: ``(predictions, targets)`` or ``(predictions, targets, patient_ids)``."""
        patient_ids = output[2] if len(output) > 2 else None
        self._records.extend(image_records(output[0], output[1], self.iou_threshold, patient_ids, self.score_threshold))

    def compute(self) -> dict[str, float]:
        """All scalars over everything seen since the last reset, on every rank's images."""
        gathered = idist.all_gather(self._records) if idist.get_world_size() > 1 else [self._records]
        records = [r for part in gathered for r in part]
        self.last_result = evaluate_records(
            records,
            self.num_classes,
            self.malignant_label,
            self.prefix,
            self.max_detections,
            self.operating_threshold,
            self.matching,
            self.iou_threshold,
        )
        return self.last_result.scalars
