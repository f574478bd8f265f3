"""Handler that turns an evaluation's lesion metrics into the files people read (``configs/evaluate.json``).

After the evaluator's epoch, when the metrics have been computed, it writes to ``output_dir``:
``metrics.json`` (every scalar plus per-class tables, confusion matrix and FROC curve), ``per_image.csv``,
``confusion_matrix.png`` (thesis Fig. 17), ``froc.png``, ``f1_threshold.png`` (F1 against the confidence
threshold) and ``metrics.md`` (the per-class table for the model card). Only rank 0 writes under
DistributedDataParallel.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events

from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.outputs import evaluation_report as report

__all__ = ["EvaluationReportHandler"]

logger = logging.getLogger(__name__)


class EvaluationReportHandler:
    """Write the evaluation report of a :class:`~malignet_bundle.metrics.evaluation.LesionMetrics` metric.

    Args:
        metric: the metric attached to the evaluator (its last full result is read).
        output_dir: folder for the report files.
        class_map: class names for tables and plots.
    """

    def __init__(self, metric: Any, output_dir: str | os.PathLike, class_map: ClassMap) -> None:
        self.metric, self.output_dir, self.class_map = metric, Path(output_dir), class_map

    def attach(self, engine: Engine) -> None:
        """Run after the metrics are computed at the end of the evaluator's epoch."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the report files of the last evaluation."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
            return
        result = self.metric.last_result
        if result is None:
            raise RuntimeError("the lesion metric has no result: is it attached to the same evaluator?")
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        report.write_metrics_json(result.scalars, result.detail, out / "metrics.json")
        report.write_per_image_csv(result.per_image, out / "per_image.csv")
        report.plot_confusion_matrix(
            result.detail["classification"]["confusion"], self.class_map.names, out / "confusion_matrix.png"
        )
        froc = result.detail["froc"]
        report.plot_froc(froc["fp_per_image"], froc["sensitivity"], froc["operating_points"], out / "froc.png")
        report.plot_score_threshold_curve(
            result.detail["score_threshold_curve"], self.metric.score_threshold, out / "f1_threshold.png"
        )
        report.write_text_atomic(self.markdown(result), out / "metrics.md")
        logger.info("evaluation report written to %s", out)

    def markdown(self, result: Any) -> str:
        """Per-class and summary tables (thesis Tables 4–7) as Markdown, for the model card."""
        d, name = result.detail, self.class_map.name
        segmentation = {name(c): v for c, v in d["segmentation"]["per_class"].items()}
        segmentation["weighted mean"] = {
            k[5:]: d["segmentation"][k] for k in ("mean_precision", "mean_sensitivity", "mean_f1")
        }
        classification = {name(c): v for c, v in d["classification"]["per_class"].items()}
        metastasis = {level: d["metastasis"][level] for level in ("image", "patient")}
        coco, froc, pixel = d["coco"], d["froc"], d["pixel"]
        summary = {
            "all lesions": {
                **{f"localization {k}": v for k, v in d["localization"].items()},
                "AP": coco["ap"],
                "AP50": coco["ap50"],
                "FROC CPM": froc["cpm"],
                "pixel Dice": pixel["dice"],
            }
        }
        curve = d["score_threshold_curve"]
        return "\n".join(
            [
                f"Test images: {d['images']}; lesions matched at mask IoU ≥ the configured threshold.\n",
                report.markdown_tables(
                    segmentation,
                    ["precision", "sensitivity", "f1", "support"],
                    "Lesion instance segmentation (Table 4)",
                ),
                report.markdown_tables(summary, list(summary["all lesions"]), "Localization, COCO, FROC, pixels"),
                report.markdown_tables(
                    classification,
                    ["accuracy", "precision", "sensitivity", "specificity", "f1", "support"],
                    "Classification of matched lesions (Table 6)",
                ),
                report.markdown_tables(
                    metastasis,
                    ["accuracy", "precision", "recall", "specificity", "f1"],
                    "Metastasis prediction (Table 7)",
                ),
                report.markdown_tables(
                    {"sensitivity": {f"{r:g}": v for r, v in froc["operating_points"].items()}},
                    [f"{r:g}" for r in froc["operating_points"]],
                    "FROC: sensitivity at false positives per image",
                ),
                f"Mean F1 at the operating point {self.metric.score_threshold:g}: {d['segmentation']['mean_f1']:.3f}; "
                f"highest over confidence thresholds: {curve['best_mean_f1']:.3f} at {curve['best_threshold']:g} "
                "(chosen on this split, so optimistic; f1_threshold.png).\n",
            ]
        )
