"""Lesion matching, the Table 4 counts (thesis §3.8) and the cheap key metric :class:`LesionF1`.

Matching: a predicted lesion matches a ground-truth lesion when their mask IoU is at least ``iou_threshold``
(0.5), one-to-one, greedily in descending score (ties: lower prediction index first). Two rules
(:data:`MATCHING_RULES`, argument ``matching``):

- ``"class_agnostic"`` (the default, the thesis's protocol as this bundle has always read it): the classes are
  ignored while matching and checked afterwards, so a higher-scored prediction of the wrong class takes the
  lesion and a lower-scored one of the right class on the same lesion counts as a false positive;
- ``"per_class"`` (COCO-style): a prediction can only match a lesion of its own class, so in that case the
  right-class prediction takes the lesion and the wrong-class one is the false positive.

Per class c, precision is the number of predictions of class c matched to a ground-truth lesion of class c
over the predictions of class c, and sensitivity the same count over the ground-truth lesions of class c;
the mean precision, sensitivity and F1 weight the classes by their ground-truth support.

A ratio with a zero denominator is 0.0 (:func:`safe_ratio`), here and in every other metrics module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from pycocotools import mask as mask_utils

__all__ = [
    "safe_ratio",
    "f1_score",
    "binarize_masks",
    "encode_masks",
    "rle_iou",
    "mask_iou",
    "MATCHING_RULES",
    "check_matching",
    "greedy_match",
    "match_pairs",
    "match_lesions",
    "LesionCounts",
    "class_weighted_f1",
    "LesionF1",
]


# "class_agnostic": match on IoU alone, check the class afterwards; "per_class": only same-class pairs match
MATCHING_RULES = ("class_agnostic", "per_class")


def check_matching(matching: str) -> str:
    """``matching`` if it is one of :data:`MATCHING_RULES`.

    Raises:
        ValueError: for any other value, naming the rules.
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"matching must be one of {list(MATCHING_RULES)}, got {matching!r}")
    return matching


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0.0 when the denominator is zero."""
    return float(numerator) / float(denominator) if denominator > 0 else 0.0


def f1_score(precision: float, sensitivity: float) -> float:
    """Harmonic mean of precision and sensitivity (0.0 when both are zero)."""
    return safe_ratio(2 * precision * sensitivity, precision + sensitivity)


def binarize_masks(masks: Any, threshold: float = 0.5) -> torch.Tensor:
    """Instance masks as a (N, H, W) bool tensor on the CPU.

    Args:
        masks: (N, 1, H, W) or (N, H, W); floating point masks are probabilities (``> threshold``), integer or
            bool masks are labels (``> 0``).
        threshold: probability above which a pixel belongs to the lesion.
    """
    masks = torch.as_tensor(masks).detach().cpu()
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.dtype == torch.bool:
        return masks
    return masks > threshold if masks.is_floating_point() else masks != 0


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """(N, H, W) binary masks → N COCO run-length encodings (``pycocotools.mask.encode``)."""
    masks = np.asarray(masks)
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))


def rle_iou(pred_rles: Sequence[dict], gt_rles: Sequence[dict]) -> np.ndarray:
    """(P, G) IoU of COCO run-length encodings (``pycocotools.mask.iou``, no crowd; 0 where both are empty)."""
    if len(pred_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(pred_rles), len(gt_rles)))
    return np.asarray(mask_utils.iou(list(pred_rles), list(gt_rles), [0] * len(gt_rles)), dtype=float)


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(P, H, W) × (G, H, W) binary masks → (P, G) IoU (float64; 0 where both masks are empty).

    Computed on run-length encodings by pycocotools (the IoU COCO AP uses), several times faster on the CPU
    than a dense product for detector-sized masks.
    """
    pred, gt = binarize_masks(pred), binarize_masks(gt)
    return torch.from_numpy(rle_iou(encode_masks(pred.numpy()), encode_masks(gt.numpy())))


def greedy_match(iou: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one (prediction, ground truth) pairs from a (P, G) IoU matrix, greedy in descending score.

    In descending score (stable: equal scores keep their order), each prediction takes the still unmatched
    ground-truth lesion of highest IoU (ties: the lower index) if that IoU reaches ``iou_threshold``. A
    prediction's match therefore depends only on the predictions scored above it.
    """
    iou = np.asarray(iou, dtype=float)
    if iou.size == 0:
        return []
    available = np.ones(iou.shape[1], dtype=bool)
    pairs = []
    for p in np.argsort(-np.asarray(scores, dtype=float), kind="stable").tolist():
        row = np.where(available, iou[p], -1.0)
        g = int(row.argmax())
        if row[g] >= iou_threshold:
            pairs.append((p, g))
            available[g] = False
            if not available.any():
                break
    return pairs


def match_pairs(
    iou: np.ndarray,
    scores: np.ndarray,
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    iou_threshold: float = 0.5,
    matching: str = "class_agnostic",
) -> list[tuple[int, int]]:
    """One-to-one (prediction, ground truth) pairs under a :data:`MATCHING_RULES` rule.

    Per-class matching is :func:`greedy_match` with the IoU of every pair of different classes set to zero:
    in one pass in descending score, each prediction can only take a lesion of its own class, which is the
    same as matching every class on its own (COCO's evaluation) because the classes share no lesion.

    Args:
        iou: (P, G) mask IoU.
        scores: (P,) prediction scores.
        pred_labels: (P,) predicted classes.
        gt_labels: (G,) ground-truth classes.
        iou_threshold: the smallest IoU of a match.
        matching: ``"class_agnostic"`` or ``"per_class"``.

    Returns:
        The matched (prediction index, ground-truth index) pairs.

    Raises:
        ValueError: for an unknown rule, or labels that do not fit the IoU matrix.
    """
    check_matching(matching)
    iou = np.asarray(iou, dtype=float)
    if matching == "per_class" and iou.size:
        pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
        if iou.shape != (len(pred_labels), len(gt_labels)):
            raise ValueError(f"IoU {iou.shape} does not fit {len(pred_labels)} predicted and {len(gt_labels)} labels")
        iou = np.where(pred_labels[:, None] == gt_labels[None, :], iou, 0.0)
    return greedy_match(iou, scores, iou_threshold)


def match_lesions(
    pred_masks: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_masks: torch.Tensor,
    iou_threshold: float = 0.5,
    pred_labels: torch.Tensor | None = None,
    gt_labels: torch.Tensor | None = None,
    matching: str = "class_agnostic",
) -> list[tuple[int, int]]:
    """One-to-one (prediction, ground truth) pairs with mask IoU ≥ ``iou_threshold``, greedy by score.

    Args:
        pred_masks: (P, H, W) binary predicted masks.
        pred_scores: (P,) scores.
        gt_masks: (G, H, W) binary ground-truth masks.
        iou_threshold: the smallest mask IoU of a match.
        pred_labels: (P,) predicted classes; needed for ``matching="per_class"``.
        gt_labels: (G,) ground-truth classes; needed for ``matching="per_class"``.
        matching: one of :data:`MATCHING_RULES`.

    Returns:
        The pairs of :func:`match_pairs` on :func:`mask_iou`.

    Raises:
        ValueError: for an unknown rule, or per-class matching without labels.
    """
    check_matching(matching)
    scores = torch.as_tensor(pred_scores).detach().cpu().double().numpy()
    iou = mask_iou(pred_masks, gt_masks).numpy()
    if matching == "class_agnostic":
        return greedy_match(iou, scores, iou_threshold)
    if pred_labels is None or gt_labels is None:
        raise ValueError("per-class matching needs pred_labels and gt_labels")
    labels = [torch.as_tensor(x).detach().cpu().numpy() for x in (pred_labels, gt_labels)]
    return match_pairs(iou, scores, *labels, iou_threshold, matching)


class LesionCounts:
    """Per-class counts accumulated over images: predicted, ground truth, and matched with the right class.

    Arrays are indexed by class label (index 0, background, stays unused).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.predicted = np.zeros(num_classes + 1, dtype=np.int64)
        self.ground_truth = np.zeros(num_classes + 1, dtype=np.int64)
        self.matched = np.zeros(num_classes + 1, dtype=np.int64)

    def add(self, pred_labels: np.ndarray, gt_labels: np.ndarray, pairs: Sequence[tuple[int, int]]) -> None:
        """Add one image given its labels and matched (prediction, ground truth) pairs."""
        pred_labels, gt_labels = np.asarray(pred_labels, dtype=np.int64), np.asarray(gt_labels, dtype=np.int64)
        for name, labels in (("predicted", pred_labels), ("ground-truth", gt_labels)):
            if labels.size and (labels.min() < 1 or labels.max() > self.num_classes):
                raise ValueError(f"{name} labels {np.unique(labels).tolist()} outside 1..{self.num_classes}")
        np.add.at(self.predicted, pred_labels, 1)
        np.add.at(self.ground_truth, gt_labels, 1)
        for p, g in pairs:
            if pred_labels[p] == gt_labels[g]:
                self.matched[gt_labels[g]] += 1

    def update(
        self,
        pred_masks: torch.Tensor,
        pred_labels: torch.Tensor,
        pred_scores: torch.Tensor,
        gt_masks: torch.Tensor,
        gt_labels: torch.Tensor,
        iou_threshold: float = 0.5,
        matching: str = "class_agnostic",
    ) -> None:
        """Match one image's (binary) predicted masks to its ground truth and add the counts.

        Args:
            pred_masks: (P, H, W) binary predicted masks.
            pred_labels: (P,) predicted classes.
            pred_scores: (P,) scores.
            gt_masks: (G, H, W) binary ground-truth masks.
            gt_labels: (G,) ground-truth classes.
            iou_threshold: the smallest mask IoU of a match.
            matching: one of :data:`MATCHING_RULES`.
        """
        pairs = match_lesions(pred_masks, pred_scores, gt_masks, iou_threshold, pred_labels, gt_labels, matching)
        self.add(pred_labels.cpu().numpy(), gt_labels.cpu().numpy(), pairs)


def class_weighted_f1(counts: LesionCounts) -> dict[str, Any]:
    """Mean precision, sensitivity and F1 over classes weighted by ground-truth support (thesis Table 4).

    Also returns the per-class values as arrays (``precision``, ``sensitivity``, ``f1``; index 0 is class 1).
    Without any ground-truth lesion the means are 0.0.
    """
    support = counts.ground_truth[1:].astype(float)
    precision = np.divide(
        counts.matched[1:], counts.predicted[1:], out=np.zeros_like(support), where=counts.predicted[1:] > 0
    )
    sensitivity = np.divide(counts.matched[1:], support, out=np.zeros_like(support), where=support > 0)
    f1 = np.divide(
        2 * precision * sensitivity,
        precision + sensitivity,
        out=np.zeros_like(support),
        where=(precision + sensitivity) > 0,
    )
    per_class = {"precision": precision, "sensitivity": sensitivity, "f1": f1}
    if support.sum() == 0:
        return {"mean_precision": 0.0, "mean_sensitivity": 0.0, "mean_f1": 0.0, **per_class}
    weights = support / support.sum()
    return {
        "mean_precision": float(weights @ precision),
        "mean_sensitivity": float(weights @ sensitivity),
        "mean_f1": float(weights @ f1),
        **per_class,
    }


class LesionF1(Metric):
    """Ignite metric: class-weighted mean F1 of lesion instance segmentation (the key validation metric).

    Expects ``output_transform`` to return ``(predictions, targets)``: lists of per-image dicts with
    ``masks``/``labels``/``scores`` and ``masks``/``labels``. Masks are binarised by :func:`binarize_masks`.
    Only counts are kept, summed over ranks under DistributedDataParallel.

    Args:
        num_classes: lesion classes (background excluded).
        iou_threshold: mask IoU for a match.
        output_transform: engine output → (predictions, targets).
        device: where the counts are accumulated.
        score_threshold: predictions scoring below it are not counted (the operating point, Table 11: 0.7,
            when the network returns lower-scoring detections for AP and FROC).
        matching: one of :data:`MATCHING_RULES` (default ``"class_agnostic"``, the protocol's rule).

    Raises:
        ValueError: for an unknown ``matching``.
    """

    def __init__(
        self,
        num_classes: int = 4,
        iou_threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.0,
        matching: str = "class_agnostic",
    ) -> None:
        self.num_classes, self.iou_threshold, self.score_threshold = num_classes, iou_threshold, score_threshold
        self.matching = check_matching(matching)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        self._counts = torch.zeros((3, self.num_classes + 1), dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence[Sequence[dict]]) -> None:
        """Add a batch of per-image predictions and targets (a third item, e.g. patient ids, is ignored)."""
        counts = LesionCounts(self.num_classes)
        for pred, target in zip(output[0], output[1], strict=True):
            keep = torch.as_tensor(pred["scores"]).detach().cpu() >= self.score_threshold
            counts.update(
                binarize_masks(pred["masks"])[keep],
                torch.as_tensor(pred["labels"]).cpu()[keep],
                torch.as_tensor(pred["scores"]).cpu()[keep],
                binarize_masks(target["masks"]),
                torch.as_tensor(target["labels"]),
                self.iou_threshold,
                self.matching,
            )
        self._counts += torch.as_tensor(
            np.stack([counts.predicted, counts.ground_truth, counts.matched]), device=self._device
        )

    @sync_all_reduce("_counts")
    def compute(self) -> float:
        """Class-weighted mean F1 over everything seen since the last reset."""
        counts = LesionCounts(self.num_classes)
        counts.predicted, counts.ground_truth, counts.matched = (c.cpu().numpy() for c in self._counts)
        return class_weighted_f1(counts)["mean_f1"]
