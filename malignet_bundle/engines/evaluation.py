"""Handler that turns an evaluation's lesion metrics into the files people read (``configs/evaluate.json``).

After the evaluator's epoch, when the metrics have been computed, it writes to ``output_dir``:
``metrics.json`` (every scalar plus per-class tables, confusion matrix and FROC curve, and which thresholds
the tables use and where they came from), ``per_image.csv``, ``confusion_matrix.png`` (thesis Fig. 17),
``froc.png``, ``f1_threshold.png`` (F1 against the confidence threshold) and ``metrics.md`` (the tables for
the model card). Only rank 0 writes under DistributedDataParallel.

Tables 4–7 are reported twice when the metric has an operating threshold (the model's own, stored with it,
or ``--score_threshold``): at that threshold (the model as it is used; per-image rows and confusion matrix
too) and at the thesis's fixed protocol threshold (0.7), so the figures stay comparable with the thesis and
with earlier runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
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
        operating_point: where the metric's ``operating_threshold`` came from: an
            :class:`~malignet_bundle.engines.operating_point.OperatingPoint` (or a mapping with ``origin`` and
            ``source``); None when the metric has no operating threshold or its origin is unknown.
    """

    def __init__(
        self, metric: Any, output_dir: str | os.PathLike, class_map: ClassMap, operating_point: Any = None
    ) -> None:
        self.metric, self.output_dir, self.class_map = metric, Path(output_dir), class_map
        self.operating_point = operating_point

    def attach(self, engine: Engine) -> None:
        """Run after the metrics are computed at the end of the evaluator's epoch."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def thresholds(self) -> dict[str, Any]:
        """Which threshold each set of figures uses and where it came from (``metrics.json``'s ``thresholds``)."""
        prefix = getattr(self.metric, "prefix", "")
        protocol = {
            "threshold": float(self.metric.score_threshold),
            "source": "the thesis's fixed operating point (Table 11), the protocol of Tables 4-7",
            "metrics": f"{prefix}<name> (no infix)",
            "detail": "detail.segmentation, .localization, .classification, .metastasis, .pixel",
        }
        ranking = "AP, FROC and the score-threshold curve rank every detection above the network's score floor"
        operating_threshold = getattr(self.metric, "operating_threshold", None)
        if operating_threshold is None:
            return {"protocol": protocol, "ranking": ranking}
        point = self.operating_point
        if point is not None and not isinstance(point, Mapping):
            point = point.as_dict()
        operating = {
            "threshold": float(operating_threshold),
            "origin": (point or {}).get("origin", "unknown"),
            "source": (point or {}).get("source", "given to the metric"),
            "metrics": f"{prefix}operating_<name>",
            "detail": "detail.operating_point",
            "per_image": "per_image.csv and confusion_matrix.png",
        }
        return {"operating": operating, "protocol": protocol, "ranking": ranking}

    def __call__(self, engine: Engine) -> None:
        """Write the report files of the last evaluation."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
            return
        result = self.metric.last_result
        if result is None:
            raise RuntimeError("the lesion metric has no result: is it attached to the same evaluator?")
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        thresholds = self.thresholds()
        used = result.detail.get("operating_point", result.detail)  # the figures of the model as used
        report.write_metrics_json(result.scalars, result.detail, out / "metrics.json", thresholds=thresholds)
        report.write_per_image_csv(result.per_image, out / "per_image.csv")
        report.plot_confusion_matrix(
            used["classification"]["confusion"], self.class_map.names, out / "confusion_matrix.png"
        )
        froc = result.detail["froc"]
        report.plot_froc(froc["fp_per_image"], froc["sensitivity"], froc["operating_points"], out / "froc.png")
        report.plot_score_threshold_curve(
            result.detail["score_threshold_curve"],
            thresholds.get("operating", thresholds["protocol"])["threshold"],
            out / "f1_threshold.png",
            protocol_threshold=thresholds["protocol"]["threshold"] if "operating" in thresholds else None,
        )
        report.write_text_atomic(self.markdown(result, thresholds), out / "metrics.md")
        logger.info("evaluation report written to %s", out)

    def _tables(self, families: Mapping[str, Any], where: str) -> list[str]:
        """Tables 4–7 and the localization and pixel scores of one operating point, as Markdown."""
        name = self.class_map.name
        segmentation = {name(c): v for c, v in families["segmentation"]["per_class"].items()}
        segmentation["weighted mean"] = {
            k[5:]: families["segmentation"][k] for k in ("mean_precision", "mean_sensitivity", "mean_f1")
        }
        classification = {name(c): v for c, v in families["classification"]["per_class"].items()}
        metastasis = {level: families["metastasis"][level] for level in ("image", "patient")}
        pixel = families["pixel"]
        summary = {
            "all lesions": {
                **{f"localization {k}": v for k, v in families["localization"].items()},
                **{f"pixel {k}": pixel[k] for k in ("dice", "precision", "sensitivity")},
            }
        }
        return [
            report.markdown_tables(
                segmentation,
                ["precision", "sensitivity", "f1", "support"],
                f"Lesion instance segmentation (Table 4) {where}",
            ),
            report.markdown_tables(
                summary, list(summary["all lesions"]), f"Localization (Table 5) and pixel scores {where}"
            ),
            report.markdown_tables(
                classification,
                ["accuracy", "precision", "sensitivity", "specificity", "f1", "support"],
                f"Classification of matched lesions (Table 6) {where}",
            ),
            report.markdown_tables(
                metastasis,
                ["accuracy", "precision", "recall", "specificity", "f1"],
                f"Metastasis prediction (Table 7) {where}",
            ),
        ]

    def markdown(self, result: Any, thresholds: Mapping[str, Any] | None = None) -> str:
        """Tables 4–7 at the operating and the protocol threshold, then the ranking metrics, as Markdown."""
        thresholds = self.thresholds() if thresholds is None else thresholds
        d = result.detail
        protocol = thresholds["protocol"]["threshold"]
        lines = [f"Test images: {d['images']}; lesions matched at mask IoU ≥ the configured threshold.\n"]
        if "operating" in thresholds:
            operating = thresholds["operating"]
            lines.append(
                f"Operating threshold {operating['threshold']:g}: {operating['source']}. Tables 4–7 are given at "
                f"it (the model as used; also per_image.csv and confusion_matrix.png) and at the thesis's fixed "
                f"{protocol:g} (the protocol: comparable with the thesis and earlier runs).\n"
            )
            lines += self._tables(d["operating_point"], f"at the operating threshold {operating['threshold']:g}")
        lines += self._tables(d, f"at the protocol threshold {protocol:g}")
        coco, froc, curve = d["coco"], d["froc"], d["score_threshold_curve"]
        ranking = {"every detection": {"AP": coco["ap"], "AP50": coco["ap50"], "AP75": coco["ap75"]}}
        ranking["every detection"]["FROC CPM"] = froc["cpm"]
        lines += [
            report.markdown_tables(ranking, list(ranking["every detection"]), "COCO AP and FROC (no threshold)"),
            report.markdown_tables(
                {"sensitivity": {f"{r:g}": v for r, v in froc["operating_points"].items()}},
                [f"{r:g}" for r in froc["operating_points"]],
                "FROC: sensitivity at false positives per image",
            ),
        ]
        at = [f"{d['segmentation']['mean_f1']:.3f} at the protocol threshold {protocol:g}"]
        if "operating" in thresholds:
            operating_f1 = d["operating_point"]["segmentation"]["mean_f1"]
            at.insert(0, f"{operating_f1:.3f} at the operating threshold {thresholds['operating']['threshold']:g}")
        lines.append(
            f"Mean F1: {'; '.join(at)}; highest over confidence thresholds: {curve['best_mean_f1']:.3f} at "
            f"{curve['best_threshold']:g} (chosen on this split, so optimistic; f1_threshold.png).\n"
        )
        return "\n".join(lines)
