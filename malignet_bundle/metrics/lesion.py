"""Lesion instance-segmentation metrics of thesis §3.8 (Table 4) and an ignite metric for the evaluators.

Matching: a predicted lesion matches a ground-truth lesion when their mask IoU is at least ``iou_threshold``
(0.5), one-to-one, greedily in descending score, regardless of class. Per class c, precision is the number of
predictions of class c matched to a ground-truth lesion of class c over the predictions of class c, and
sensitivity the same count over the ground-truth lesions of class c; the mean precision, sensitivity and F1
weight the classes by their ground-truth support.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["mask_iou", "match_lesions", "LesionCounts", "class_weighted_f1", "LesionF1"]


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(P, H, W) × (G, H, W) binary masks → (P, G) IoU."""
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return torch.zeros((pred.shape[0], gt.shape[0]))
    p = pred.flatten(1).float()
    g = gt.flatten(1).float()
    inter = p @ g.T
    union = p.sum(1, keepdim=True) + g.sum(1) - inter
    return inter / union.clamp(min=1)


def match_lesions(
    pred_masks: torch.Tensor, pred_scores: torch.Tensor, gt_masks: torch.Tensor, iou_threshold: float = 0.5
) -> list[tuple[int, int]]:
    """One-to-one (prediction, ground truth) pairs with mask IoU ≥ ``iou_threshold``, greedy by score."""
    iou = mask_iou(pred_masks, gt_masks)
    pairs, taken = [], set()
    for p in torch.argsort(pred_scores, descending=True).tolist():
        if iou.shape[1] == 0:
            break
        candidates = [(float(iou[p, g]), g) for g in range(iou.shape[1]) if g not in taken]
        if not candidates:
            break
        best_iou, best = max(candidates)
        if best_iou >= iou_threshold:
            pairs.append((p, best))
            taken.add(best)
    return pairs


class LesionCounts:
    """Per-class counts accumulated over images: predicted, ground truth, and matched with the right class."""

    def __init__(self, num_classes: int) -> None:
        self.predicted = np.zeros(num_classes + 1, dtype=np.int64)
        self.ground_truth = np.zeros(num_classes + 1, dtype=np.int64)
        self.matched = np.zeros(num_classes + 1, dtype=np.int64)

    def update(
        self,
        pred_masks: torch.Tensor,
        pred_labels: torch.Tensor,
        pred_scores: torch.Tensor,
        gt_masks: torch.Tensor,
        gt_labels: torch.Tensor,
        iou_threshold: float = 0.5,
    ) -> None:
        """Add one image's predictions and ground truth."""
        np.add.at(self.predicted, pred_labels.cpu().numpy().astype(int), 1)
        np.add.at(self.ground_truth, gt_labels.cpu().numpy().astype(int), 1)
        for p, g in match_lesions(pred_masks.cpu(), pred_scores.cpu(), gt_masks.cpu(), iou_threshold):
            if int(pred_labels[p]) == int(gt_labels[g]):
                self.matched[int(gt_labels[g])] += 1


def class_weighted_f1(counts: LesionCounts) -> dict[str, Any]:
    """Mean precision, sensitivity and F1 over classes weighted by ground-truth support (thesis Table 4).

    Also returns the per-class values as arrays (``precision``, ``sensitivity``, ``f1``; index 0 is class 1).
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
    ``masks``/``labels``/``scores`` and ``masks``/``labels``. Predicted masks are binarised at 0.5.

    Args:
        num_classes: lesion classes (background excluded).
        iou_threshold: mask IoU for a match.
        output_transform: engine output → (predictions, targets).
    """

    def __init__(
        self,
        num_classes: int = 4,
        iou_threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes, self.iou_threshold = num_classes, iou_threshold
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        self._counts = torch.zeros((3, self.num_classes + 1), dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple[Sequence[dict], Sequence[dict]]) -> None:
        """Add a batch of per-image predictions and targets."""
        counts = LesionCounts(self.num_classes)
        for pred, target in zip(*output, strict=True):
            masks = pred["masks"]
            masks = (masks[:, 0] if masks.dim() == 4 else masks) > 0.5
            counts.update(
                masks, pred["labels"], pred["scores"], target["masks"] > 0, target["labels"], self.iou_threshold
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
