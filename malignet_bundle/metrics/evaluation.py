"""The evaluation of thesis §3.8 (Tables 4–7, Fig. 17) plus COCO AP, FROC and pixel-level scores (design §6).

Every family is a plain function on per-image records (:func:`image_records` builds them from per-image
prediction and target dicts), :func:`evaluate_lesions` runs them all, and :class:`LesionMetrics` is the ignite
metric the evaluators attach.

- Matching: prediction ↔ ground truth when mask IoU ≥ ``iou_threshold`` (0.5), one-to-one, greedy in
  descending score, class-agnostic (:func:`~malignet_bundle.metrics.lesion.match_lesions`).
- Table 4: per class c, precision = predictions of c matched to a ground truth of c / predictions of c;
  sensitivity = the same count / ground-truth lesions of c; means weighted by ground-truth support.
- Table 5 (localization): the same with classes ignored.
- Table 6: on matched pairs, one-vs-rest accuracy, precision, sensitivity, specificity, F1 per class, and the
  confusion matrix (rows ground truth, columns prediction); means weighted by ground-truth support.
- Table 7 (metastasis): an image is predicted positive with ≥ 1 malignant prediction. A ground-truth
  positive image is TP when a malignant prediction matches a malignant ground truth, else FN; a negative
  image is FP with any malignant prediction, else TN. Per patient, the images of a patient are pooled: TP if
  any image is TP; a positive patient without a TP image is FN; a negative patient is FP if any image has a
  malignant prediction.
- COCO AP@[.5:.95] and AP50 of the masks (class-aware), by pycocotools' ``COCOeval``.
- FROC (class-agnostic): sensitivity at 1/8 … 8 false positives per image and their mean (CPM).
- Pixel level: Dice, precision, sensitivity of the union of predicted vs ground-truth lesion masks, pixels
  summed over all images.

A ratio whose denominator is zero is 0.0 (e.g. precision with no predictions), except COCO AP, which is nan
when there is no ground truth at all (pycocotools' -1), as nothing can be said.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from pycocotools import mask as mask_utils

from malignet_bundle.metrics.lesion import LesionCounts, class_weighted_f1, match_lesions

__all__ = [
    "FROC_RATES",
    "ImageRecord",
    "EvaluationResult",
    "image_records",
    "lesion_segmentation_metrics",
    "localization_metrics",
    "classification_metrics",
    "metastasis_metrics",
    "coco_ap",
    "froc",
    "pixel_metrics",
    "evaluate_records",
    "evaluate_lesions",
    "LesionMetrics",
]

FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
COUNT_KEYS = ("tp", "fp", "fn", "tn")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _f1(precision: float, sensitivity: float) -> float:
    return _ratio(2 * precision * sensitivity, precision + sensitivity)


@dataclass
class ImageRecord:
    """What the metrics need of one image, compact enough to keep for a whole test set.

    Attributes:
        pred_labels, pred_scores: (N,) predicted classes and scores.
        gt_labels: (G,) ground-truth classes.
        pairs: matched (prediction index, ground-truth index) pairs.
        pred_rles, gt_rles: masks as COCO RLE (for COCO AP).
        pixel_tp, pixel_fp, pixel_fn: union-mask pixel counts.
        patient_id, image_id: identifiers for per-patient metrics and the per-image table.
    """

    pred_labels: np.ndarray
    pred_scores: np.ndarray
    gt_labels: np.ndarray
    pairs: list[tuple[int, int]]
    pred_rles: list[dict] = field(default_factory=list)
    gt_rles: list[dict] = field(default_factory=list)
    pixel_tp: int = 0
    pixel_fp: int = 0
    pixel_fn: int = 0
    patient_id: str = ""
    image_id: str = ""

    @property
    def matched(self) -> np.ndarray:
        """(N,) whether each prediction is matched to a ground-truth lesion."""
        flags = np.zeros(len(self.pred_labels), dtype=bool)
        flags[[p for p, _ in self.pairs]] = True
        return flags


@dataclass
class EvaluationResult:
    """Scalars (logged), nested detail (tables, confusion matrix, FROC curve) and one row per image."""

    scalars: dict[str, float]
    detail: dict[str, Any]
    per_image: list[dict[str, Any]]


def _binary(masks: torch.Tensor | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    masks = torch.as_tensor(masks)
    if masks.dim() == 4:
        masks = masks[:, 0]
    masks = masks > threshold if masks.is_floating_point() else masks > 0
    return masks.cpu().numpy()


def _rles(masks: np.ndarray) -> list[dict]:
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))


def image_records(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    patient_ids: Sequence[str] | None = None,
) -> list[ImageRecord]:
    """Match each image's predictions to its ground truth and keep what the metrics need.

    Args:
        predictions: per image ``masks`` ((N, 1, H, W) probabilities or (N, H, W) binary), ``labels``, ``scores``.
        targets: per image ``masks`` (G, H, W) and ``labels``; optional ``patient_id`` and ``image_path``.
        iou_threshold: mask IoU for a match.
        patient_ids: per image patient, overriding the targets' ``patient_id``.
    """
    records = []
    for k, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        pm, gm = _binary(pred["masks"]), _binary(target["masks"])
        scores = torch.as_tensor(pred["scores"]).float().cpu().numpy()
        pairs = match_lesions(torch.from_numpy(pm), torch.from_numpy(scores), torch.from_numpy(gm), iou_threshold)
        shape = pm.shape[1:] if len(pm) else gm.shape[1:]
        pu = pm.any(0) if len(pm) else np.zeros(shape, dtype=bool)
        gu = gm.any(0) if len(gm) else np.zeros(shape, dtype=bool)
        patient = patient_ids[k] if patient_ids is not None else str(target.get("patient_id", k))
        records.append(
            ImageRecord(
                pred_labels=torch.as_tensor(pred["labels"]).cpu().numpy().astype(np.int64),
                pred_scores=scores,
                gt_labels=torch.as_tensor(target["labels"]).cpu().numpy().astype(np.int64),
                pairs=pairs,
                pred_rles=_rles(pm),
                gt_rles=_rles(gm),
                pixel_tp=int((pu & gu).sum()),
                pixel_fp=int((pu & ~gu).sum()),
                pixel_fn=int((~pu & gu).sum()),
                patient_id=str(patient),
                image_id=str(target.get("image_path", k)) + (f":{target['view']}" if "view" in target else ""),
            )
        )
    return records


def lesion_segmentation_metrics(records: Sequence[ImageRecord], num_classes: int) -> dict[str, Any]:
    """Table 4: per-class precision, sensitivity, F1 and their ground-truth-weighted means."""
    counts = LesionCounts(num_classes)
    for r in records:
        np.add.at(counts.predicted, r.pred_labels, 1)
        np.add.at(counts.ground_truth, r.gt_labels, 1)
        for p, g in r.pairs:
            if r.pred_labels[p] == r.gt_labels[g]:
                counts.matched[r.gt_labels[g]] += 1
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
    """Table 5: precision, sensitivity and F1 of lesion detection with classes ignored."""
    matched = sum(len(r.pairs) for r in records)
    precision = _ratio(matched, sum(len(r.pred_labels) for r in records))
    sensitivity = _ratio(matched, sum(len(r.gt_labels) for r in records))
    return {"precision": precision, "sensitivity": sensitivity, "f1": _f1(precision, sensitivity)}


def classification_metrics(records: Sequence[ImageRecord], num_classes: int) -> dict[str, Any]:
    """Table 6 / Fig. 17: one-vs-rest scores per class on matched lesions and the confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for r in records:
        for p, g in r.pairs:
            confusion[r.gt_labels[g] - 1, r.pred_labels[p] - 1] += 1
    total = int(confusion.sum())
    per_class = {}
    for i in range(num_classes):
        tp = confusion[i, i]
        fn, fp = confusion[i].sum() - tp, confusion[:, i].sum() - tp
        tn = total - tp - fn - fp
        precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_class[i + 1] = {
            "accuracy": _ratio(tp + tn, total),
            "precision": precision,
            "sensitivity": sensitivity,
            "specificity": _ratio(tn, tn + fp),
            "f1": _f1(precision, sensitivity),
            "support": int(confusion[i].sum()),
        }
    support = confusion.sum(1)
    weights = support / support.sum() if support.sum() else np.zeros(num_classes)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    means = {
        f"mean_{m}": float(sum(w * per_class[c][m] for w, c in zip(weights, per_class, strict=True)))
        for m in ("accuracy", "precision", "sensitivity", "specificity", "f1")
    }
    return {"per_class": per_class, "confusion": confusion, "confusion_normalised": normalised, **means}


def _outcome_scores(outcomes: Sequence[str]) -> dict[str, float]:
    tp, fp, fn, tn = (sum(o == k for o in outcomes) for k in ("TP", "FP", "FN", "TN"))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, len(outcomes)),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _f1(precision, recall),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _metastasis_outcome(r: ImageRecord, malignant: int) -> str:
    if (r.gt_labels == malignant).any():
        hit = any(r.pred_labels[p] == malignant and r.gt_labels[g] == malignant for p, g in r.pairs)
        return "TP" if hit else "FN"
    return "FP" if (r.pred_labels == malignant).any() else "TN"


def metastasis_metrics(records: Sequence[ImageRecord], malignant_label: int = 1) -> dict[str, Any]:
    """Table 7: metastasis prediction per image and per patient (accuracy, precision, recall, specificity, F1)."""
    outcomes = [_metastasis_outcome(r, malignant_label) for r in records]
    patients: dict[str, list[str]] = {}
    for r, o in zip(records, outcomes, strict=True):
        patients.setdefault(r.patient_id, []).append(o)
    per_patient = []
    for image_outcomes in patients.values():
        if any(o in ("TP", "FN") for o in image_outcomes):  # ground-truth positive patient
            per_patient.append("TP" if "TP" in image_outcomes else "FN")
        else:
            per_patient.append("FP" if "FP" in image_outcomes else "TN")
    return {"image": _outcome_scores(outcomes), "patient": _outcome_scores(per_patient), "outcomes": outcomes}


def coco_ap(records: Sequence[ImageRecord], num_classes: int) -> dict[str, float]:
    """COCO mask AP@[.5:.95] and AP50 through pycocotools; nan without ground truth, 0.0 without predictions."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gt, dets = [], [], []
    for i, r in enumerate(records, start=1):
        size = (r.gt_rles or r.pred_rles or [{"size": [1, 1]}])[0]["size"]
        images.append({"id": i, "height": int(size[0]), "width": int(size[1])})
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
    if not gt:
        return {"ap": math.nan, "ap50": math.nan}
    if not dets:
        return {"ap": 0.0, "ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": gt,
            "categories": [{"id": c} for c in range(1, num_classes + 1)],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(dets), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap, ap50 = (float(v) for v in evaluation.stats[:2])
    return {"ap": ap if ap >= 0 else math.nan, "ap50": ap50 if ap50 >= 0 else math.nan}


def froc(records: Sequence[ImageRecord], rates: Sequence[float] = FROC_RATES) -> dict[str, Any]:
    """Class-agnostic FROC: the best sensitivity with at most ``rate`` false positives per image, per rate.

    One greedy matching per image serves every score threshold: a prediction's match depends only on the
    predictions scored above it, which a higher threshold keeps.
    """
    scores = np.concatenate([r.pred_scores for r in records]) if records else np.zeros(0)
    hits = np.concatenate([r.matched for r in records]) if records else np.zeros(0, dtype=bool)
    n_truth, n_images = sum(len(r.gt_labels) for r in records), max(len(records), 1)
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.cumsum(hits[order]), np.cumsum(~hits[order])
    sensitivity = tp / n_truth if n_truth else np.zeros(len(order))
    fp_per_image = fp / n_images
    points = {}
    for rate in rates:
        ok = fp_per_image <= rate
        points[float(rate)] = float(sensitivity[ok].max()) if ok.any() else 0.0
    return {
        "operating_points": points,
        "cpm": float(np.mean(list(points.values()))),
        "fp_per_image": fp_per_image.tolist(),
        "sensitivity": np.asarray(sensitivity, dtype=float).tolist(),
    }


def pixel_metrics(records: Sequence[ImageRecord]) -> dict[str, float]:
    """Dice, precision and sensitivity of the lesion-union masks, pixels summed over images."""
    tp, fp, fn = (sum(getattr(r, k) for r in records) for k in ("pixel_tp", "pixel_fp", "pixel_fn"))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "sensitivity": _ratio(tp, tp + fn),
    }


def _per_image_rows(records: Sequence[ImageRecord], malignant: int, outcomes: Sequence[str]) -> list[dict]:
    rows = []
    for r, outcome in zip(records, outcomes, strict=True):
        matched = len(r.pairs)
        rows.append(
            {
                "image": r.image_id,
                "patient_id": r.patient_id,
                "ground_truth": len(r.gt_labels),
                "predicted": len(r.pred_labels),
                "matched": matched,
                "matched_same_class": sum(int(r.pred_labels[p] == r.gt_labels[g]) for p, g in r.pairs),
                "false_positives": len(r.pred_labels) - matched,
                "missed": len(r.gt_labels) - matched,
                "malignant_ground_truth": int((r.gt_labels == malignant).sum()),
                "malignant_predicted": int((r.pred_labels == malignant).sum()),
                "metastasis": outcome,
                "pixel_dice": _ratio(2 * r.pixel_tp, 2 * r.pixel_tp + r.pixel_fp + r.pixel_fn),
            }
        )
    return rows


def evaluate_records(
    records: Sequence[ImageRecord], num_classes: int, malignant_label: int = 1, prefix: str = ""
) -> EvaluationResult:
    """Every metric family on ``records``; scalar names carry ``prefix`` (e.g. ``test_``)."""
    segmentation = lesion_segmentation_metrics(records, num_classes)
    localization = localization_metrics(records)
    classification = classification_metrics(records, num_classes)
    metastasis = metastasis_metrics(records, malignant_label)
    coco = coco_ap(records, num_classes)
    curve = froc(records)
    pixels = pixel_metrics(records)
    scalars = {
        "mean_precision": segmentation["mean_precision"],
        "mean_sensitivity": segmentation["mean_sensitivity"],
        "mean_f1": segmentation["mean_f1"],
        **{f"localization_{k}": v for k, v in localization.items()},
        **{f"classification_{k}": v for k, v in classification.items() if k.startswith("mean_")},
        **{f"metastasis_image_{k}": float(v) for k, v in metastasis["image"].items() if k not in COUNT_KEYS},
        **{f"metastasis_patient_{k}": float(v) for k, v in metastasis["patient"].items() if k not in COUNT_KEYS},
        **coco,
        "froc_cpm": curve["cpm"],
        **{f"froc_sensitivity_at_{rate:g}": s for rate, s in curve["operating_points"].items()},
        **{f"pixel_{k}": v for k, v in pixels.items()},
    }
    detail = {
        "images": len(records),
        "segmentation": segmentation,
        "localization": localization,
        "classification": classification,
        "metastasis": {k: v for k, v in metastasis.items() if k != "outcomes"},
        "coco": coco,
        "froc": curve,
        "pixel": pixels,
    }
    return EvaluationResult(
        {f"{prefix}{k}": float(v) for k, v in scalars.items()},
        detail,
        _per_image_rows(records, malignant_label, metastasis["outcomes"]),
    )


def evaluate_lesions(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    malignant_label: int = 1,
    patient_ids: Sequence[str] | None = None,
) -> EvaluationResult:
    """All metrics of the module docstring on per-image prediction and target dicts."""
    records = image_records(predictions, targets, iou_threshold, patient_ids)
    return evaluate_records(records, num_classes, malignant_label)


class LesionMetrics(Metric):
    """Ignite metric computing :func:`evaluate_records`; ``compute`` returns the flat scalars.

    Ignite puts each scalar into ``engine.state.metrics`` (so metric handlers such as MLflow's log them); the
    full result stays in :attr:`last_result` for report writers. Records are RLE-compressed, and gathered
    from every rank under DistributedDataParallel.

    Args:
        num_classes: lesion classes (background excluded).
        iou_threshold: mask IoU for a match.
        malignant_label: class label of metastases (Table 7).
        prefix: prefix of every scalar name (``test_`` keeps them apart from validation metrics).
        output_transform: engine output → (predictions, targets), lists of per-image dicts.
    """

    def __init__(
        self,
        num_classes: int = 4,
        iou_threshold: float = 0.5,
        malignant_label: int = 1,
        prefix: str = "",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes, self.iou_threshold = num_classes, iou_threshold
        self.malignant_label, self.prefix = malignant_label, prefix
        self.last_result: EvaluationResult | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        self._records: list[ImageRecord] = []

    @reinit__is_reduced
    def update(self, output: tuple[Sequence[dict], Sequence[dict]]) -> None:
        """Add a batch of per-image predictions and targets."""
        predictions, targets = output[0], output[1]
        self._records.extend(image_records(predictions, targets, self.iou_threshold))

    def compute(self) -> dict[str, float]:
        """All scalars over everything seen since the last reset (all ranks)."""
        records = self._records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, records)
            records = [r for part in parts for r in part]
        self.last_result = evaluate_records(records, self.num_classes, self.malignant_label, self.prefix)
        return self.last_result.scalars
