"""Compact per-image evaluation records: one matching per image, shared by every metric family.

:func:`image_records` binarises each image's masks once, encodes them as COCO run-length encodings, matches
predictions to ground truth on the encodings' IoU (:func:`~malignet_bundle.metrics.lesion.greedy_match`, the
same matching as :func:`~malignet_bundle.metrics.lesion.match_lesions`) and keeps only what the metrics need:
labels, scores, the matched pairs, the encodings (for COCO AP) and pixel counts (for the pixel-level scores).

A record keeps every prediction it is given, for the ranking metrics (COCO AP, FROC), and its operating
``score_threshold`` (Table 11: 0.7) for the metrics of a deployed detector (Tables 4–7, pixel scores):
:meth:`ImageRecord.at_operating_point` drops what scores below it. Greedy matching in descending score makes
that the same as matching only the predictions above the threshold; :meth:`ImageRecord.with_score_threshold`
moves the operating point of a record (its pixel counts are recomputed from the encodings), so one matching
serves several operating points (the model's own threshold and the thesis's 0.7).

A record takes a few kB (about 7 kB with 100 detections of a 320 × 320 view), so a whole test set fits in
memory and can be pickled across ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from malignet_bundle.metrics.lesion import binarize_masks, encode_masks, greedy_match, rle_iou

__all__ = ["ImageRecord", "semantic_map", "image_records"]


@dataclass
class ImageRecord:
    """What the metrics need of one image.

    Attributes:
        pred_labels: (N,) predicted classes.
        pred_scores: (N,) prediction scores.
        gt_labels: (G,) ground-truth classes.
        pairs: matched (prediction index, ground-truth index) pairs.
        height: image height (pixels).
        width: image width (pixels).
        pred_rles: predicted masks as COCO RLE (for COCO AP).
        gt_rles: ground-truth masks as COCO RLE.
        pixel_tp: pixels in both the predicted and the ground-truth lesion unions.
        pixel_fp: pixels only in the predicted union.
        pixel_fn: pixels only in the ground-truth union.
        pixel_class: ``{class: (tp, fp, fn)}`` pixel counts of the semantic maps (:func:`semantic_map`).
        patient_id: patient, for the per-patient metastasis metrics (None: unknown, the image is its own patient).
        image_id: image name for the per-image table (``image_path[:view]``; empty when unknown).
        score_threshold: the operating point: the least score of a prediction counted by the thresholded
            metrics; the pixel counts are already taken at it.
    """

    pred_labels: np.ndarray
    pred_scores: np.ndarray
    gt_labels: np.ndarray
    pairs: list[tuple[int, int]]
    height: int = 0
    width: int = 0
    pred_rles: list[dict] = field(default_factory=list)
    gt_rles: list[dict] = field(default_factory=list)
    pixel_tp: int = 0
    pixel_fp: int = 0
    pixel_fn: int = 0
    pixel_class: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    patient_id: str | None = None
    image_id: str = ""
    score_threshold: float = 0.0

    @property
    def matched(self) -> np.ndarray:
        """(N,) whether each prediction is matched to a ground-truth lesion."""
        flags = np.zeros(len(self.pred_labels), dtype=bool)
        flags[[p for p, _ in self.pairs]] = True
        return flags

    def with_score_threshold(self, score_threshold: float) -> ImageRecord:
        """This record with its operating point at ``score_threshold`` (itself if it already is there).

        The matching does not depend on the operating point; the pixel counts do, and are recomputed from the
        run-length encodings, as :func:`image_records` would have computed them at ``score_threshold``.
        """
        if score_threshold == self.score_threshold:
            return self
        shape = (self.height, self.width)
        counts = _pixel_counts(
            _decode(self.pred_rles, shape),
            _decode(self.gt_rles, shape),
            self.pred_labels,
            self.gt_labels,
            self.pred_scores,
            score_threshold,
        )
        return replace(self, score_threshold=score_threshold, **counts)

    def at_operating_point(self) -> ImageRecord:
        """This record with only the predictions scoring at least ``score_threshold`` (itself if all do)."""
        keep = self.pred_scores >= self.score_threshold
        if keep.all():
            return self
        index = np.cumsum(keep) - 1  # new position of each kept prediction
        return replace(
            self,
            pred_labels=self.pred_labels[keep],
            pred_scores=self.pred_scores[keep],
            pairs=[(int(index[p]), g) for p, g in self.pairs if keep[p]],
            pred_rles=[r for r, k in zip(self.pred_rles, keep, strict=True) if k],
        )


def semantic_map(masks: np.ndarray, labels: np.ndarray, priority: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Class per pixel (0 background) from instance masks; where lesions overlap the highest ``priority`` wins.

    Args:
        masks: (N, H, W) binary masks.
        labels: (N,) classes.
        priority: (N,) ranking of the lesions (equal priorities: the lower index wins).
        shape: (H, W).
    """
    out = np.zeros(tuple(shape), dtype=np.int64)
    for i in np.argsort(-np.asarray(priority), kind="stable")[::-1]:  # paint the winner last
        out[masks[i]] = labels[i]
    return out


def _pixel_class_counts(pred: np.ndarray, gt: np.ndarray) -> dict[int, tuple[int, int, int]]:
    counts = {}
    for c in sorted(set(np.unique(pred).tolist()) | set(np.unique(gt).tolist()) - {0}):
        p, g = pred == c, gt == c
        counts[int(c)] = (int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum()))
    return counts


def _decode(rles: Sequence[dict], shape: tuple[int, int]) -> np.ndarray:
    """COCO run-length encodings → (N, H, W) bool masks."""
    if len(rles) == 0:
        return np.zeros((0, *shape), dtype=bool)
    return np.moveaxis(mask_utils.decode(list(rles)), -1, 0).astype(bool)


def _pixel_counts(
    pm: np.ndarray, gm: np.ndarray, pred_labels: np.ndarray, gt_labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """The pixel fields of an :class:`ImageRecord` with the predictions scoring at least ``threshold``."""
    operating = scores >= threshold
    pu, gu = pm[operating].any(0), gm.any(0)
    pred_sem = semantic_map(pm[operating], pred_labels[operating], scores[operating], pu.shape)
    gt_sem = semantic_map(gm, gt_labels, -np.arange(len(gm)), gu.shape)
    return {
        "pixel_tp": int((pu & gu).sum()),
        "pixel_fp": int((pu & ~gu).sum()),
        "pixel_fn": int((~pu & gu).sum()),
        "pixel_class": _pixel_class_counts(pred_sem, gt_sem),
    }


def _image_id(target: Mapping[str, Any]) -> str:
    name = str(target.get("image_path", ""))
    return f"{name}:{target['view']}" if "view" in target else name


def image_records(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    patient_ids: Sequence[str] | None = None,
    score_threshold: float = 0.0,
) -> list[ImageRecord]:
    """Match each image's predictions to its ground truth and keep what the metrics need.

    The pixel-level semantic maps give each pixel the class of the highest-scoring prediction covering it, and
    of the first listed ground-truth lesion covering it; they and the pixel counts use the predictions
    scoring at least ``score_threshold``.

    Args:
        predictions: per image ``masks`` ((N, 1, H, W) probabilities, binarised at 0.5, or (N, H, W) binary),
            ``labels`` (N,) and ``scores`` (N,).
        targets: per image ``masks`` (G, H, W) and ``labels`` (G,); optional ``patient_id``, ``image_path`` and
            ``view`` (strings).
        iou_threshold: the smallest mask IoU of a match.
        patient_ids: per image patient, overriding the targets' ``patient_id``; without either, every image is
            its own patient.
        score_threshold: the records' operating point (see the module docstring).
    """
    if patient_ids is not None and len(patient_ids) != len(targets):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(targets)} images")
    records = []
    for k, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        pm, gm = binarize_masks(pred["masks"]), binarize_masks(target["masks"])
        shape = next((tuple(m.shape[1:]) for m in (gm, pm) if m.dim() == 3), (0, 0))
        pm = pm if len(pm) else torch.zeros((0, *shape), dtype=torch.bool)
        gm = gm if len(gm) else torch.zeros((0, *shape), dtype=torch.bool)
        if pm.shape[1:] != gm.shape[1:]:
            raise ValueError(f"image {k}: predicted masks {tuple(pm.shape)} vs ground truth {tuple(gm.shape)}")
        pm, gm = pm.numpy(), gm.numpy()
        pred_rles, gt_rles = encode_masks(pm), encode_masks(gm)
        scores = torch.as_tensor(pred["scores"]).detach().cpu().float().numpy()
        pairs = greedy_match(rle_iou(pred_rles, gt_rles), scores, iou_threshold)
        pred_labels = torch.as_tensor(pred["labels"]).detach().cpu().numpy().astype(np.int64)
        gt_labels = torch.as_tensor(target["labels"]).detach().cpu().numpy().astype(np.int64)
        patient = patient_ids[k] if patient_ids is not None else target.get("patient_id")
        records.append(
            ImageRecord(
                pred_labels=pred_labels,
                pred_scores=scores,
                gt_labels=gt_labels,
                pairs=pairs,
                height=int(gm.shape[1]),
                width=int(gm.shape[2]),
                pred_rles=pred_rles,
                gt_rles=gt_rles,
                **_pixel_counts(pm, gm, pred_labels, gt_labels, scores, score_threshold),
                patient_id=None if patient is None else str(patient),
                image_id=_image_id(target),
                score_threshold=score_threshold,
            )
        )
    return records
