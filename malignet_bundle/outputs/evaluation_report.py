"""Files an evaluation leaves behind: metrics JSON, per-image CSV, confusion-matrix and FROC plots, Markdown table.

Every file is written through a temporary name and an atomic rename, so an interrupted evaluation never
leaves a half-written report that looks complete.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from malignet_bundle.atomic_io import save_figure_atomic, write_json_atomic, write_text_atomic
from malignet_bundle.data.annotations import to_json_types

__all__ = [
    "write_metrics_json",
    "write_per_image_csv",
    "plot_confusion_matrix",
    "plot_froc",
    "plot_score_threshold_curve",
    "markdown_tables",
    "save_figure",
]


def write_per_image_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """One CSV row per evaluated image; the columns are the union of the rows' keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), path)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG through a temporary file and an atomic rename, then close it."""
    save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")


def plot_confusion_matrix(counts: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix of matched lesions (thesis Fig. 17), counts in brackets.

    Args:
        counts: (C, C) matched lesions, rows ground-truth class, columns predicted class.
        class_names: the C class names.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    labels = [n.replace("_", " ") for n in class_names]
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2.5, 1.1 * len(labels) + 1.8))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if normalised[i, j] > 0.6 else "black"
            ax.text(j, i, f"{normalised[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("lesion classification (matched lesions, row-normalised)")
    save_figure(fig, path)


def plot_froc(
    fp_per_image: Sequence[float],
    sensitivity: Sequence[float],
    operating_points: Mapping[float, float],
    path: str | os.PathLike,
) -> None:
    """FROC curve: lesion sensitivity against false positives per image, log x axis, operating points marked.

    Args:
        fp_per_image: the curve's x values (ascending).
        sensitivity: the curve's y values.
        operating_points: ``{false positives per image: sensitivity}`` at the reported rates.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = np.asarray(fp_per_image, dtype=float)
    y = np.asarray(sensitivity, dtype=float)
    if x.size:
        ax.step(np.maximum(x, 1e-3), y, where="post", label="FROC")
    rates = sorted(operating_points)
    ax.plot(rates, [operating_points[r] for r in rates], "o", label="reported rates")
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(rates) / 2 if rates else 1 / 16, max(rates) * 2 if rates else 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    save_figure(fig, path)


def plot_score_threshold_curve(
    curve: Mapping[str, Any],
    operating_threshold: float,
    path: str | os.PathLike,
    protocol_threshold: float | None = None,
) -> None:
    """Mean F1 (Table 4) and localization F1 (Table 5) against the detection confidence threshold.

    Args:
        curve: :func:`~malignet_bundle.metrics.evaluation.score_threshold_curve`'s result.
        operating_threshold: the operating point the tables use (the model's own, or Table 11's 0.7), drawn as
            a vertical line.
        path: PNG to write.
        protocol_threshold: the thesis's fixed threshold (0.7) the tables are also given at, drawn as a
            second line; None when it is the operating point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(curve["thresholds"], curve["mean_f1"], marker="o", markersize=3, label="mean F1 (Table 4)")
    ax.plot(curve["thresholds"], curve["localization_f1"], marker="s", markersize=3, label="localization F1")
    ax.axvline(operating_threshold, color="black", linestyle="--", label=f"operating point {operating_threshold:g}")
    if protocol_threshold is not None:
        ax.axvline(protocol_threshold, color="grey", linestyle=":", label=f"thesis protocol {protocol_threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("detection confidence threshold")
    ax.set_ylabel("F1")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, path)


def markdown_tables(per_class: Mapping[str, Mapping[str, float]], columns: Sequence[str], title: str = "") -> str:
    """A Markdown table, one row per class (or summary row), one column per metric, three decimals.

    Args:
        per_class: ``{row name: {metric: value}}``.
        columns: metric names to show, in order.
        title: optional line above the table.
    """
    lines = [f"**{title}**", ""] if title else []
    lines.append("| | " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name, values in per_class.items():
        cells = [f"{values[c]:.3f}" if isinstance(values.get(c), float) else str(values.get(c, "")) for c in columns]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_metrics_json(
    scalars: Mapping[str, float],
    detail: Mapping[str, Any],
    path: str | os.PathLike,
    thresholds: Mapping[str, Any] | None = None,
) -> None:
    """``{"metrics": scalars, "thresholds": thresholds, "detail": detail}`` as JSON (numpy values as numbers).

    Args:
        scalars: the flat metrics.
        detail: the nested per-family results.
        path: JSON file to write.
        thresholds: which confidence threshold each set of metrics uses and where it came from (left out
            when None).
    """
    content = {"metrics": to_json_types(scalars)}
    if thresholds is not None:
        content["thresholds"] = to_json_types(thresholds)
    write_json_atomic({**content, "detail": to_json_types(detail)}, path)
