"""Learning curves: where does training stop paying? Train in segments, evaluate each segment's model.

A curve is one training run of a benchmark variant (``fpn``, ``malignet``, …) on a benchmark profile's
dataset, cut into segments of ``every`` steps. After each segment the newest checkpoint (the model as it is at
that step, not the best one so far) is evaluated twice with the bundle's ``evaluate.json``:

- on the validation split, to choose the operating threshold the way training does
  (:func:`~malignet_bundle.metrics.operating_point.choose_operating_threshold`);
- on the test split, at that threshold, which gives AP50, mean F1 at the protocol's 0.7 and mean F1 at the
  validation-chosen threshold.

Each point is appended to ``curve.json`` atomically, so a killed curve resumes from its last checkpoint and
its last finished point, and a later session can extend a finished curve to more steps on the same machine
(:func:`run_learning_curve` refuses to mix machines). The learning-rate schedule is a warm-up followed by a
constant rate, so training in segments is the same training as one long run.

:func:`plateau` reads where a metric stops rising; :func:`plot_learning_curves` draws the figure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malignet_bundle.atomic_io import save_figure_atomic, write_json_atomic
from malignet_bundle.data.datalist import load_datalist
from malignet_bundle.engines.checkpoint import FinishedRunError, prepare_resume, read_checkpoint_state
from malignet_bundle.experiments.ssl_benchmark import (
    VARIANTS,
    Profile,
    RunSpec,
    config_files,
    evaluation_config_files,
    machine_description,
    run_overrides,
    run_workflow,
    subset_datalist,
)
from malignet_bundle.metrics.operating_point import REFERENCE_THRESHOLD, choose_operating_threshold

__all__ = ["CURVE_METRICS", "CurvePoint", "run_learning_curve", "plateau", "plot_learning_curves"]

logger = logging.getLogger(__name__)

# what each point records from the test evaluation, and how the figure names it
CURVE_METRICS = {
    "ap50": "test AP50",
    "mean_f1": f"test mean F1 at {REFERENCE_THRESHOLD:g}",
    "operating_mean_f1": "test mean F1 at the validation-chosen threshold",
}


@dataclass(frozen=True)
class CurvePoint:
    """One evaluated model of a learning curve.

    Attributes:
        step: training iterations done.
        train_seconds: wall-clock seconds of training up to ``step`` (evaluations excluded).
        threshold: operating threshold chosen on the validation split.
        ap50, mean_f1, operating_mean_f1: test-split figures (see :data:`CURVE_METRICS`).
        val_mean_f1: validation mean F1 at the chosen threshold.
    """

    step: int
    train_seconds: float
    threshold: float
    ap50: float
    mean_f1: float
    operating_mean_f1: float
    val_mean_f1: float


def _evaluate(
    files: Sequence[Path], overrides: Mapping[str, Any], out: Path, split: str, checkpoint: Path, threshold: float
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` at ``threshold`` with ``evaluate.json``; returns its metrics.json."""
    override_file = out / "overrides.json"
    write_json_atomic(
        {
            **overrides,
            "checkpoint": str(checkpoint),
            "test_split": split,
            "score_threshold": threshold,
            "evaluation_dir": str(out),
        },
        override_file,
    )
    run_workflow(evaluation_config_files(files, override_file, pixel_protocol=False), "evaluating", None)
    return json.loads((out / "metrics.json").read_text())


def run_learning_curve(
    variant: str,
    profile: Profile,
    dataset_dir: Path,
    output_dir: Path,
    chest_detector: Path,
    steps: int,
    every: int,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``variant`` to ``steps`` iterations, evaluating every ``every``; resumes ``curve.json`` if there.

    Args:
        variant: a benchmark variant (:data:`~malignet_bundle.experiments.ssl_benchmark.VARIANTS`).
        profile: dataset, network and batch size (its ``iterations`` are ignored: ``steps`` is the budget).
        dataset_dir: the profile's dataset.
        output_dir: the curve lives in ``output_dir/curves/<variant>-s<seed>``; the preprocessing cache is
            ``output_dir/cache``, shared with the benchmark.
        chest_detector: chest detector weights.
        steps: the last point's iterations; rounded up to whole points.
        every: iterations between points; rounded up to whole epochs (one pass over the labeled views).
        seed: training seed.
        overrides: extra bundle overrides (e.g. a speed setting), recorded in ``curve.json``.

    Returns:
        ``curve.json``'s content: the settings, the machine and the points so far.

    Raises:
        ValueError: when ``curve.json`` was started on another machine or with other settings.
    """
    if VARIANTS[variant][3]:
        raise ValueError(f"{variant!r} needs a teacher run; learning curves take one training run per variant")
    run = RunSpec(variant, seed)
    run_dir = output_dir / "curves" / f"{variant}-s{seed}"
    curve_path = run_dir / "curve.json"
    datalist = subset_datalist(load_datalist(dataset_dir / "datalist.json"), run)
    write_json_atomic(datalist, run_dir / "datalist.json")
    base = run_overrides(run, profile, dataset_dir, run_dir, chest_detector, output_dir / "cache", datalist)
    epoch_length = base["train#trainer#epoch_length"]
    epochs_per_point = max(1, -(-every // epoch_length))
    points = max(1, -(-steps // (epochs_per_point * epoch_length)))
    settings = {
        "variant": variant,
        "seed": seed,
        "profile": profile.name,
        "epoch_length": epoch_length,
        "epochs_per_point": epochs_per_point,
        "overrides": dict(overrides or {}),
    }
    machine = machine_description()
    curve: dict[str, Any] = {**settings, "trained_on": machine, "points": []}
    if curve_path.is_file():
        previous = json.loads(curve_path.read_text())
        if previous["trained_on"] != machine:
            raise ValueError(
                f"{curve_path} was trained on {previous['trained_on']!r}, this is {machine!r}: a curve continues "
                "only on its own machine (the CPU's kernels change the trained model); use another --output_dir"
            )
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ValueError(f"{curve_path} was started with other settings (before, now): {changed}")
        curve = previous
    files = config_files(run, profile)  # the profile's configs too (cpu: cpu.json), as the study trains
    done = {p["step"] for p in curve["points"]}
    total_epochs = points * epochs_per_point
    for point in range(1, points + 1):
        epochs = point * epochs_per_point
        step = epochs * epoch_length
        if step in done:
            continue
        train_overrides = {
            **base,
            **(overrides or {}),
            "epochs": epochs,
            # validation (model.pt and its threshold) once, at the curve's end; points are evaluated below
            "val_interval": total_epochs,
        }
        override_file = run_dir / "overrides.json"
        write_json_atomic(train_overrides, override_file)
        models = run_dir / "models"
        started = time.perf_counter()
        try:
            prepare_resume(models, epochs)
        except FinishedRunError:  # killed between the segment's last checkpoint and its evaluation
            logger.info("%s: segment to step %d was trained before the interruption", run_dir.name, step)
        else:
            logger.info("%s: training to step %d (point %d of %d)", run_dir.name, step, point, points)
            run_workflow([*files, override_file], "training", None)
        seconds = time.perf_counter() - started
        states = [read_checkpoint_state(p) for p in models.glob("latest_checkpoint_epoch=*.pt")]
        state = max(states, key=lambda s: s.epoch)
        checkpoint = state.path
        if state.epoch != epochs:
            raise RuntimeError(f"{checkpoint} holds epoch {state.epoch}, expected {epochs}")
        evaluation = run_dir / "evaluation" / f"step{step:06d}"
        eval_overrides = {k: v for k, v in train_overrides.items() if not k.startswith("train#")}
        val = _evaluate(files, eval_overrides, evaluation / "validation", "validation", checkpoint, REFERENCE_THRESHOLD)
        val_curve = val["detail"]["score_threshold_curve"]
        choice = choose_operating_threshold(val_curve["thresholds"], val_curve["mean_f1"])
        test = _evaluate(files, eval_overrides, evaluation / "test", "test", checkpoint, choice.threshold)
        metrics = test["metrics"]
        previous_seconds = curve["points"][-1]["train_seconds"] if curve["points"] else 0.0
        curve["points"].append(
            vars(
                CurvePoint(
                    step=step,
                    train_seconds=round(previous_seconds + seconds, 1),
                    threshold=choice.threshold,
                    ap50=float(metrics["test_ap50"]),
                    mean_f1=float(metrics["test_mean_f1"]),
                    operating_mean_f1=float(metrics["test_operating_mean_f1"]),
                    val_mean_f1=choice.mean_f1,
                )
            )
        )
        write_json_atomic(curve, curve_path)
        logger.info("%s: %s", run_dir.name, curve["points"][-1])
    return curve


def plateau(steps: Sequence[int], values: Sequence[float], tolerance: float = 0.02) -> dict[str, Any]:
    """Where a curve stops rising: the first step within ``tolerance`` of the best value from there on.

    Args:
        steps: the points' steps, ascending.
        values: the metric at each step.
        tolerance: gains smaller than this count as flat (the seed spread of these metrics is larger).

    Returns:
        ``step`` and ``value`` of the plateau's start, ``best`` (the highest value), and ``still_rising``:
        True when the last point gained more than ``tolerance`` over the best before it, i.e. the curve had
        not flattened when it stopped.
    """
    if not values:
        raise ValueError("an empty curve has no plateau")
    start = next(i for i in range(len(values)) if max(values[i:]) - values[i] <= tolerance)
    rising = len(values) > 1 and values[-1] - max(values[:-1]) > tolerance
    return {
        "step": int(steps[start]),
        "value": float(values[start]),
        "best": float(max(values)),
        "still_rising": rising,
    }


def plot_learning_curves(curves: Sequence[Mapping[str, Any]], path: Path, labels: Mapping[str, str]) -> None:
    """One figure: each :data:`CURVE_METRICS` (columns) against steps (top row) and training wall-clock (bottom).

    Args:
        curves: ``curve.json`` contents, one per variant.
        path: the PNG to write (atomically).
        labels: variant → legend label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 8), squeeze=False)
    for column, (key, title) in enumerate(CURVE_METRICS.items()):
        for curve in curves:
            points = curve["points"]
            values = [p[key] for p in points]
            label = labels.get(curve["variant"], curve["variant"])
            axes[0][column].plot([p["step"] for p in points], values, marker="o", label=label)
            axes[1][column].plot([p["train_seconds"] / 60 for p in points], values, marker="o", label=label)
        axes[0][column].set_title(title)
        axes[0][column].set_xlabel("training steps")
        axes[1][column].set_xlabel("training wall-clock (minutes)")
        for row in (0, 1):
            axes[row][column].set_ylim(0, 1)
            axes[row][column].grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    machines = sorted({c["trained_on"] for c in curves})
    fig.suptitle("Learning curves, " + "; ".join(machines), fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
