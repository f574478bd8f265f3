"""The operating threshold: the detection confidence a model is used at, chosen on the validation split.

The thesis uses one fixed confidence, 0.7 (Table 11), for every model. A model early in training is
under-confident, so its best mean F1 lies at a lower confidence; and the best point of the test split's
curve (:func:`~malignet_bundle.metrics.evaluation.score_threshold_curve`) is chosen on the data it reports,
so it is optimistic. Here the threshold is chosen on the validation split instead, from the same curve:

- :func:`choose_operating_threshold` picks the threshold of highest mean F1 (Table 4). Thresholds whose
  mean F1 equal the best one are indistinguishable on validation, so the one nearest the reference (0.7,
  the thesis's protocol) wins, and of two equally near the higher one (fewer detections). Without any
  correct detection (no detections at all, or none matched) every point is 0.0 and the reference is kept.
- :class:`OperatingPointF1` is the ignite metric of a training's validation: it reports the mean F1 at the
  chosen threshold (the key metric that picks ``model.pt``), the threshold, and the mean F1 at the
  reference, so runs compared at 0.7 stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise, MetricUsage, reinit__is_reduced

from malignet_bundle.metrics.evaluation import SCORE_THRESHOLDS, score_threshold_curve
from malignet_bundle.metrics.records import ImageRecord, image_records

__all__ = ["REFERENCE_THRESHOLD", "OperatingPointChoice", "choose_operating_threshold", "OperatingPointF1"]

# the thesis's fixed operating point (Table 11), the protocol of Tables 4–7
REFERENCE_THRESHOLD = 0.7
# mean F1 values closer than this are one value: equal counts give bit-equal F1, but two different count
# sets with the same ratio (1/2 and 2/4) can differ in the last bits
_F1_TOLERANCE = 1e-9


@dataclass(frozen=True)
class OperatingPointChoice:
    """The threshold chosen on a curve of mean F1 against detection confidence.

    Attributes:
        threshold: the chosen operating threshold.
        mean_f1: mean F1 (Table 4) at ``threshold``.
        reference_threshold: the fixed protocol threshold (0.7).
        reference_mean_f1: mean F1 at ``reference_threshold``.
        thresholds: the candidate thresholds, ascending.
        curve: mean F1 at each candidate.
    """

    threshold: float
    mean_f1: float
    reference_threshold: float
    reference_mean_f1: float
    thresholds: tuple[float, ...]
    curve: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists instead of tuples)."""
        values = asdict(self)
        return {**values, "thresholds": list(self.thresholds), "curve": list(self.curve)}


def choose_operating_threshold(
    thresholds: Sequence[float], mean_f1: Sequence[float], reference: float = REFERENCE_THRESHOLD
) -> OperatingPointChoice:
    """The threshold of highest mean F1; ties go to the one nearest ``reference``, then to the higher one.

    Args:
        thresholds: candidate thresholds (any order); ``reference`` must be one of them.
        mean_f1: mean F1 at each threshold.
        reference: the protocol threshold, kept when the curve cannot tell the candidates apart (all 0.0:
            no detections, or none correct).

    Raises:
        ValueError: on an empty curve, curves of different lengths, or a ``reference`` not among the
            ``thresholds``.
    """
    t = np.asarray(thresholds, dtype=float)
    f1 = np.asarray(mean_f1, dtype=float)
    if t.size == 0 or t.shape != f1.shape:
        raise ValueError(f"need one mean F1 per threshold, got {t.size} thresholds and {f1.size} values")
    at_reference = np.flatnonzero(np.isclose(t, reference, rtol=0.0, atol=1e-9))
    if at_reference.size == 0:
        raise ValueError(f"the reference threshold {reference:g} is not among the thresholds {t.tolist()}")
    candidates = np.flatnonzero(f1 >= f1.max() - _F1_TOLERANCE)
    # nearest the reference first, then the higher threshold; distances rounded so 0.65 and 0.75 tie at 0.7
    best = min(candidates.tolist(), key=lambda i: (round(abs(t[i] - reference), 9), -t[i]))
    order = np.argsort(t, kind="stable")
    return OperatingPointChoice(
        threshold=float(t[best]),
        mean_f1=float(f1[best]),
        reference_threshold=float(reference),
        reference_mean_f1=float(f1[at_reference[0]]),
        thresholds=tuple(float(x) for x in t[order]),
        curve=tuple(float(x) for x in f1[order]),
    )


class OperatingPointF1(Metric):
    """Ignite metric: mean F1 at the confidence threshold chosen on these images, the threshold, and F1 at 0.7.

    ``update`` takes ``(predictions, targets)`` (lists of per-image dicts with ``masks``/``labels``/``scores``
    and ``masks``/``labels``, as :class:`~malignet_bundle.metrics.lesion.LesionF1`) and keeps one compact
    record per image (:func:`~malignet_bundle.metrics.records.image_records`, every prediction). ``compute``
    gathers the records of every rank, computes the mean-F1 curve over ``thresholds`` once
    (:func:`~malignet_bundle.metrics.evaluation.score_threshold_curve`) and picks the threshold by
    :func:`choose_operating_threshold`. It puts three scalars into ``engine.state.metrics``: under the name it
    is attached with (use it as the evaluator's key metric), the mean F1 at the chosen threshold; under
    ``threshold_name``, the threshold; under ``reference_name``, the mean F1 at ``reference_threshold``. The
    whole choice stays in :attr:`last_choice` for the sidecar of ``model.pt``.

    The network must return detections down to the lowest threshold (``ScoreFloorInferer`` in
    ``configs/train.json``): a point below the network's own score floor sees only what the floor lets through.

    Args:
        num_classes: lesion classes (background excluded).
        iou_threshold: mask IoU for a match.
        thresholds: candidate operating thresholds (the reference is added when missing).
        reference_threshold: the protocol threshold (Table 11: 0.7).
        threshold_name: metric name of the chosen threshold.
        reference_name: metric name of the mean F1 at the reference (``val_mean_f1``: the key metric before
            thresholds were chosen, so earlier runs stay comparable).
        output_transform: engine output → (predictions, targets).
        device: unused (records stay on the CPU); ignite's argument.
    """

    def __init__(
        self,
        num_classes: int = 4,
        iou_threshold: float = 0.5,
        thresholds: Sequence[float] = SCORE_THRESHOLDS,
        reference_threshold: float = REFERENCE_THRESHOLD,
        threshold_name: str = "val_operating_threshold",
        reference_name: str = "val_mean_f1",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes, self.iou_threshold = num_classes, iou_threshold
        self.reference_threshold = float(reference_threshold)
        self.thresholds = tuple(sorted({round(float(t), 6) for t in thresholds} | {self.reference_threshold}))
        self.threshold_name, self.reference_name = threshold_name, reference_name
        self.name = "operating_mean_f1"
        self.last_choice: OperatingPointChoice | None = None
        super().__init__(
            output_transform=output_transform, device=device, skip_unrolling=True, metrics_result_mode="flatten"
        )

    def attach(self, engine: Engine, name: str, usage: str | MetricUsage = EpochWise.usage_name) -> None:
        """Attach as ignite does, remembering ``name``: the mean F1 at the chosen threshold is stored under it."""
        self.name = name
        super().attach(engine, name, usage)

    @reinit__is_reduced
    def reset(self) -> None:
        """Start a new accumulation."""
        self._records: list[ImageRecord] = []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch of per-image predictions and targets (a third item, e.g. patient ids, is ignored)."""
        self._records.extend(image_records(output[0], output[1], self.iou_threshold))

    def compute(self) -> dict[str, float]:
        """The three scalars over every rank's images since the last reset."""
        gathered = idist.all_gather(self._records) if idist.get_world_size() > 1 else [self._records]
        records = [r for part in gathered for r in part]
        curve = score_threshold_curve(records, self.num_classes, self.thresholds)
        self.last_choice = choose_operating_threshold(curve["thresholds"], curve["mean_f1"], self.reference_threshold)
        choice = self.last_choice
        return {
            self.name: choice.mean_f1,
            self.threshold_name: choice.threshold,
            self.reference_name: choice.reference_mean_f1,
        }
