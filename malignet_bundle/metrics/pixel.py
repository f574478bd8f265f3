"""Pixel-level Dice, precision and sensitivity, pixels summed over all images (micro average).

Two protocols share the same scores (:func:`pixel_scores`):

- **Instance predictions** (:func:`pixel_metrics`, part of every lesion evaluation). Class-agnostic: the union
  of the predicted lesion masks against the union of the ground-truth lesion masks. Per class: the semantic
  maps of :func:`~malignet_bundle.metrics.records.image_records`, where an overlapped pixel belongs to the
  highest-scoring prediction and to the first listed ground-truth lesion.
- **Class label maps** (:func:`label_map_confusion`, :func:`semantic_pixel_scores`, the ignite metric
  :class:`SemanticPixelMetrics` and its report :class:`PixelReportHandler`): the protocol of the semantic
  bone-scan baselines (Lin et al. 2022: DSC, CPA = pixel precision, recall = sensitivity; the Double U-Net of
  2023: precision, sensitivity, F1 = Dice). One (C + 1) × (C + 1) confusion matrix of pixels over all images
  gives, per class, Dice, precision and sensitivity of that class against every other label; ``lesion``: any
  lesion class against background; ``malignant``: the malignant class against everything else (background and
  the other classes), the related work's metastasis-against-the-rest figure (numerically the malignant
  class's own row). A semantic model's label map is its argmax (``label_map`` in its predictions:
  :func:`~malignet_bundle.metrics.label_instances.semantic_detections`); an instance model's is painted from
  its lesions scoring at least the metric's ``score_threshold``, higher scores winning overlaps, so both kinds
  of model are scored on the same scale.

A ratio with a zero denominator is 0.0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from malignet_bundle.atomic_io import write_json_atomic, write_text_atomic
from malignet_bundle.metrics.lesion import binarize_masks, safe_ratio
from malignet_bundle.metrics.records import ImageRecord, semantic_map

__all__ = [
    "pixel_scores",
    "pixel_metrics",
    "label_map_confusion",
    "semantic_pixel_scores",
    "prediction_label_map",
    "target_label_map",
    "SemanticPixelMetrics",
    "PixelReportHandler",
]

logger = logging.getLogger(__name__)


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


def label_map_confusion(predicted: Any, ground_truth: Any, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix of two class label maps.

    Args:
        predicted: (H, W) predicted class per pixel, 0 background.
        ground_truth: (H, W) true class per pixel.
        num_classes: lesion classes 1..C (the matrix is (C + 1) × (C + 1)).

    Returns:
        (C + 1, C + 1) int64 counts, rows ground truth, columns prediction, index = class (0 background).

    Raises:
        ValueError: when the maps differ in shape or hold a value outside 0..C.
    """
    pred = torch.as_tensor(predicted).detach().cpu().long()
    true = torch.as_tensor(ground_truth).detach().cpu().long()
    if pred.shape != true.shape:
        raise ValueError(f"predicted label map {tuple(pred.shape)} vs ground truth {tuple(true.shape)}")
    size = num_classes + 1
    for name, values in (("predicted", pred), ("ground-truth", true)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= size):
            raise ValueError(f"{name} label map values must be in 0..{num_classes}, got {values.unique().tolist()}")
    counts = torch.bincount((true * size + pred).flatten(), minlength=size * size)
    return counts.reshape(size, size).numpy().astype(np.int64)


def _scores_of(positive_true: np.ndarray, positive_pred: np.ndarray, confusion: np.ndarray) -> dict[str, float]:
    """Dice, precision, sensitivity and support of one set of classes against the rest."""
    tp = int(confusion[np.ix_(positive_true, positive_pred)].sum())
    fp = int(confusion[np.ix_(~positive_true, positive_pred)].sum())
    fn = int(confusion[np.ix_(positive_true, ~positive_pred)].sum())
    return {**pixel_scores(tp, fp, fn), "support": tp + fn}


def semantic_pixel_scores(confusion: np.ndarray, malignant_label: int | None = None) -> dict[str, Any]:
    """Per-class, any-lesion and malignant-against-the-rest pixel scores of a label-map confusion matrix.

    Args:
        confusion: (C + 1, C + 1) pixel counts, rows ground truth, columns prediction
            (:func:`label_map_confusion`, summed over images).
        malignant_label: the class of metastases; None leaves ``malignant`` out.

    Returns:
        ``per_class`` (``{class: {"dice", "precision", "sensitivity", "support"}}`` for 1..C, each class
        against every other label), ``lesion`` (the same keys, any lesion class against background),
        ``malignant`` (the malignant class against everything else) and ``confusion`` (the matrix as lists).
        Support is ground-truth pixels.

    Raises:
        ValueError: for a matrix that is not square or a malignant label outside 1..C.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {confusion.shape}")
    size = confusion.shape[0]
    per_class = {}
    for c in range(1, size):
        is_class = np.arange(size) == c
        per_class[c] = _scores_of(is_class, is_class, confusion)
    lesion = np.arange(size) > 0
    result: dict[str, Any] = {"per_class": per_class, "lesion": _scores_of(lesion, lesion, confusion)}
    if malignant_label is not None:
        if not 1 <= int(malignant_label) < size:
            raise ValueError(f"malignant label {malignant_label} is not a lesion class 1..{size - 1}")
        result["malignant"] = per_class[int(malignant_label)]
    result["confusion"] = confusion.tolist()
    return result


def target_label_map(target: Mapping[str, Any]) -> torch.Tensor:
    """The ground-truth label map of one image: its ``label_map``, else painted from its instances.

    Args:
        target: ``label_map`` ((1, H, W) or (H, W)), or ``masks`` (G, H, W) and ``labels`` (G,) (the first
            listed lesion wins overlaps, as in :func:`~malignet_bundle.metrics.records.image_records`).

    Returns:
        (H, W) int64 label map on the CPU.
    """
    if "label_map" in target:
        label_map = torch.as_tensor(target["label_map"]).detach().cpu().long()
        return label_map[0] if label_map.dim() == 3 else label_map
    masks = binarize_masks(target["masks"]).numpy()
    labels = torch.as_tensor(target["labels"]).detach().cpu().numpy().astype(np.int64)
    return torch.as_tensor(semantic_map(masks, labels, -np.arange(len(labels)), masks.shape[1:]))


def prediction_label_map(
    prediction: Mapping[str, Any], shape: Sequence[int], score_threshold: float = 0.0
) -> torch.Tensor:
    """The predicted label map of one image: a semantic model's ``label_map``, else painted from lesions.

    Args:
        prediction: ``label_map`` (H, W) (semantic models), or ``masks`` ((N, 1, H, W) probabilities or
            (N, H, W) binary), ``labels`` and ``scores`` (detectors).
        shape: (H, W), for a detector without any prediction.
        score_threshold: a detector's lesions scoring below it are not painted (its operating point).

    Returns:
        (H, W) int64 label map on the CPU.
    """
    if "label_map" in prediction:
        return torch.as_tensor(prediction["label_map"]).detach().cpu().long()
    masks = binarize_masks(prediction["masks"]).numpy()
    scores = torch.as_tensor(prediction["scores"]).detach().cpu().float().numpy()
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().numpy().astype(np.int64)
    keep = scores >= score_threshold
    if not len(masks):
        return torch.zeros(tuple(shape), dtype=torch.int64)
    return torch.as_tensor(semantic_map(masks[keep], labels[keep], scores[keep], masks.shape[1:]))


class SemanticPixelMetrics(Metric):
    """Ignite metric of the label-map pixel protocol (module docstring); ``compute`` returns flat scalars.

    ``update`` takes ``(predictions, targets)`` (lists of per-image dicts, as the evaluators' ``pred`` and
    ``label``) and adds each image's confusion matrix; ``compute`` sums them over every rank. The scalars are
    ``<prefix>pixel_lesion_<score>``, ``<prefix>pixel_malignant_<score>`` (with ``malignant_label``) and
    ``<prefix>pixel_class_<c>_<score>`` for score in dice, precision, sensitivity; the full result (with the
    confusion matrix) stays in :attr:`last_result` for :class:`PixelReportHandler`.

    Args:
        num_classes: lesion classes (background excluded).
        malignant_label: the class of metastases; None: no ``malignant`` scores.
        prefix: put before every scalar name (``test_``).
        score_threshold: a detector's operating point (its lesions below it are not painted); unused for
            semantic models, whose label map is their argmax.
        output_transform: engine output → (predictions, targets).
        device: where the confusion matrix is reduced across ranks.
    """

    def __init__(
        self,
        num_classes: int = 4,
        malignant_label: int | None = 1,
        prefix: str = "",
        score_threshold: float = 0.0,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes, self.malignant_label, self.prefix = int(num_classes), malignant_label, prefix
        self.score_threshold = float(score_threshold)
        self.last_result: dict[str, Any] | None = None
        super().__init__(
            output_transform=output_transform, device=device, skip_unrolling=True, metrics_result_mode="flatten"
        )

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        size = self.num_classes + 1
        self._confusion = torch.zeros((size, size), dtype=torch.int64, device=self._device)
        self._images = 0

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch: ``(predictions, targets)``."""
        predictions, targets = output[0], output[1]
        for prediction, target in zip(predictions, targets, strict=True):
            truth = target_label_map(target)
            predicted = prediction_label_map(prediction, truth.shape, self.score_threshold)
            confusion = label_map_confusion(predicted, truth, self.num_classes)
            self._confusion += torch.as_tensor(confusion, device=self._device)
            self._images += 1

    @sync_all_reduce("_confusion", "_images")
    def compute(self) -> dict[str, float]:
        """The scalars over every image seen since the last reset, on every rank."""
        result = semantic_pixel_scores(self._confusion.cpu().numpy(), self.malignant_label)
        result["images"] = int(self._images)
        self.last_result = result
        groups = {"lesion": result["lesion"], **({"malignant": result["malignant"]} if "malignant" in result else {})}
        groups.update({f"class_{c}": v for c, v in result["per_class"].items()})
        return {
            f"{self.prefix}pixel_{group}_{score}": float(values[score])
            for group, values in groups.items()
            for score in ("dice", "precision", "sensitivity")
        }


class PixelReportHandler:
    """Write the label-map pixel protocol of a :class:`SemanticPixelMetrics` as ``pixel_metrics.json`` and ``.md``.

    Attach it after the metric (the evaluator's ``val_handlers``); it writes at the end of the evaluator's
    epoch, on rank 0 only, atomically.

    Args:
        metric: the metric attached to the same evaluator.
        output_dir: the report folder (``evaluate.json``: ``<output_dir>/evaluation``).
        class_names: name of each lesion class 1..C (index 0 is class 1); None: the class numbers.
    """

    def __init__(
        self, metric: SemanticPixelMetrics, output_dir: str | os.PathLike, class_names: Sequence[str] | None = None
    ) -> None:
        self.metric, self.output_dir = metric, Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None

    def attach(self, engine: Engine) -> None:
        """Write after the metrics are computed at the end of each of ``engine``'s epochs."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _name(self, label: int) -> str:
        if self.class_names is not None and 1 <= label <= len(self.class_names):
            return self.class_names[label - 1]
        return f"class {label}"

    def markdown(self, result: Mapping[str, Any]) -> str:
        """The protocol's table as Markdown: one row per class, then any lesion and malignant against the rest.

        Args:
            result: :attr:`SemanticPixelMetrics.last_result`.

        Returns:
            The Markdown text.
        """
        rows = [(self._name(c), v) for c, v in result["per_class"].items()]
        rows.append(("any lesion vs background", result["lesion"]))
        if "malignant" in result:
            rows.append(("malignant vs the rest", result["malignant"]))
        lines = [
            f"Pixel protocol on class label maps ({result['images']} images, pixels summed over images; "
            "precision = CPA, sensitivity = recall, Dice = F1).\n",
            "| | Dice | precision | sensitivity | support (pixels) |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {name} | {v['dice']:.4f} | {v['precision']:.4f} | {v['sensitivity']:.4f} | {v['support']} |"
            for name, v in rows
        ]
        return "\n".join(lines) + "\n"

    def __call__(self, engine: Engine) -> None:
        """Write the files of the last evaluation.

        Raises:
            RuntimeError: when the metric has no result (not attached to this evaluator).
        """
        if idist.get_rank() > 0:
            return
        result = self.metric.last_result
        if result is None:
            raise RuntimeError("the pixel metric has no result: is it attached to the same evaluator?")
        scalars = {k: v for k, v in engine.state.metrics.items() if k.startswith(f"{self.metric.prefix}pixel_")}
        named = {
            **result,
            "per_class": {self._name(c): v for c, v in result["per_class"].items()},
        }
        write_json_atomic({"metrics": scalars, "detail": named}, self.output_dir / "pixel_metrics.json")
        write_text_atomic(self.markdown(result), self.output_dir / "pixel_metrics.md")
        logger.info("pixel protocol written to %s", self.output_dir / "pixel_metrics.json")
