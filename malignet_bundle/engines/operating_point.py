"""The operating threshold travels with the model: chosen in validation, stored beside ``model.pt``, read back.

``model.pt`` stays a plain state dict (what the MONAI model zoo loads), so the threshold lives in a sidecar,
``model.json`` beside it (:func:`sidecar_path`):

- :class:`ScoreFloorInferer` makes the training's validation see detections down to a low floor (0.05)
  whatever the network's own ``box_score_thresh`` (0.7), so that
  :class:`~malignet_bundle.metrics.operating_point.OperatingPointF1` can choose among lower thresholds.
- :class:`OperatingPointSaver` is the best-model saver of ``configs/train.json``: each time it writes
  ``model.pt`` (atomically) it then writes ``model.json`` (atomically) with the threshold chosen in that
  validation and the SHA-256 of that ``model.pt``.
- :func:`resolve_operating_point` gives evaluation and inference their threshold: an explicit
  ``--score_threshold`` if given; else the sidecar's, if it describes this very ``model.pt`` (same SHA-256);
  else the thesis's 0.7 with a logged warning (no sidecar, e.g. a model from before this existed or from
  the model zoo; or a sidecar of another file, e.g. a kill between the two writes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler

from malignet_bundle.atomic_io import sha256_file, write_atomic, write_json_atomic
from malignet_bundle.engines.checkpoint import AtomicDiskSaver, SafeCheckpointSaver
from malignet_bundle.engines.trainer import DetectionInferer
from malignet_bundle.metrics.operating_point import REFERENCE_THRESHOLD, OperatingPointChoice

__all__ = [
    "DEFAULT_THRESHOLD",
    "OperatingPoint",
    "sidecar_path",
    "write_operating_point",
    "read_operating_point",
    "resolve_operating_point",
    "copy_model",
    "ScoreFloorInferer",
    "OperatingPointSaver",
]

logger = logging.getLogger(__name__)

# used when a model has no operating point of its own: the thesis's fixed one (Table 11)
DEFAULT_THRESHOLD = REFERENCE_THRESHOLD


@dataclass(frozen=True)
class OperatingPoint:
    """The detection confidence threshold a run uses, and where it came from.

    Attributes:
        threshold: the threshold.
        origin: ``"override"`` (``--score_threshold``), ``"validation"`` (the model's sidecar) or
            ``"default"`` (0.7: no usable sidecar).
        source: the same in words, for logs and reports.
        sidecar: the sidecar's content when it was used, else None.
    """

    threshold: float
    origin: str
    source: str
    sidecar: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """``threshold``, ``origin`` and ``source``, for JSON reports."""
        return {"threshold": self.threshold, "origin": self.origin, "source": self.source}


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """The sidecar of a model file: the same name with ``.json`` (``model.pt`` → ``model.json``)."""
    return Path(model_path).with_suffix(".json")


def _threshold(value: Any, what: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {value!r} is not a number") from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"{what}: {threshold:g} is not a confidence between 0 and 1")
    return threshold


def write_operating_point(model_path: str | os.PathLike, choice: OperatingPointChoice, epoch: int) -> Path:
    """Write the sidecar of ``model_path`` (which must already be in place) atomically; returns its path.

    Args:
        model_path: the model file just written.
        choice: the validation's threshold choice.
        epoch: the training epoch of that validation.
    """
    model_path = Path(model_path)
    reference = f"{choice.reference_threshold:g}"
    record = {
        "operating_threshold": choice.threshold,
        "chosen_on": "validation",
        "val_mean_f1_at_threshold": choice.mean_f1,
        f"val_mean_f1_at_{reference}": choice.reference_mean_f1,
        "reference_threshold": choice.reference_threshold,
        "epoch": int(epoch),
        "thresholds": list(choice.thresholds),
        "val_mean_f1_curve": list(choice.curve),
        "model_sha256": sha256_file(model_path),
    }
    path = write_json_atomic(record, sidecar_path(model_path))
    logger.info(
        "%s: operating threshold %g (validation mean F1 %.4f; %.4f at %s), epoch %d",
        path,
        choice.threshold,
        choice.mean_f1,
        choice.reference_mean_f1,
        reference,
        epoch,
    )
    return path


def read_operating_point(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of ``model_path``, checked; None when there is none.

    A sidecar needs a numeric ``operating_threshold`` in [0, 1]; a hand-written one may hold nothing else.

    Raises:
        ValueError: naming the sidecar, when it is not a JSON object with a valid ``operating_threshold``.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable operating-point file ({e})") from e
    if not isinstance(record, dict) or "operating_threshold" not in record:
        raise ValueError(f"{path}: no 'operating_threshold' in it")
    record["operating_threshold"] = _threshold(record["operating_threshold"], f"{path}: operating_threshold")
    return record


def resolve_operating_point(
    model_path: str | os.PathLike, override: float | str | None = None, default: float = DEFAULT_THRESHOLD
) -> OperatingPoint:
    """The threshold to run ``model_path`` at: ``override``, else its sidecar's, else ``default`` (warned).

    Args:
        model_path: the model file (``model.pt``, or any checkpoint: its sidecar has its name with ``.json``).
        override: an explicit threshold (``--score_threshold``); None uses the model's.
        default: used without a sidecar that describes this model file (thesis Table 11: 0.7).

    Raises:
        ValueError: for an override outside [0, 1] or a sidecar that exists but is not readable.
    """
    if override is not None:
        threshold = _threshold(override, "--score_threshold")
        return OperatingPoint(threshold, "override", f"--score_threshold {threshold:g} (given explicitly)")
    model_path = Path(model_path)
    record = read_operating_point(model_path)
    sidecar = sidecar_path(model_path)
    if record is None:
        logger.warning(
            "no %s beside %s: using the default operating threshold %g (thesis Table 11)",
            sidecar.name,
            model_path,
            default,
        )
        return OperatingPoint(default, "default", f"default {default:g}: no {sidecar.name} beside {model_path.name}")
    digest = record.get("model_sha256")
    if digest is not None and model_path.is_file() and sha256_file(model_path) != digest:
        logger.warning(
            "%s describes another %s (SHA-256 differs): using the default operating threshold %g",
            sidecar,
            model_path.name,
            default,
        )
        return OperatingPoint(
            default, "default", f"default {default:g}: {sidecar.name} describes another {model_path.name}"
        )
    threshold = record["operating_threshold"]
    how = f"chosen on the validation split at epoch {record['epoch']}" if "epoch" in record else "stored"
    f1 = record.get("val_mean_f1_at_threshold")
    how += f", validation mean F1 {f1:.4f}" if isinstance(f1, int | float) else ""
    logger.info("operating threshold %g from %s (%s)", threshold, sidecar, how)
    return OperatingPoint(threshold, "validation", f"{sidecar} ({how})", record)


def copy_model(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a model file and then its sidecar, each atomically; without a source sidecar, the target's goes.

    The model is replaced first: a kill between the two leaves the new model beside the old sidecar, which
    :func:`resolve_operating_point` recognises by its SHA-256 and does not use.
    """
    source, target = Path(source), Path(target)
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    if sidecar_path(source).is_file():
        write_atomic(sidecar_path(target), lambda tmp: shutil.copyfile(sidecar_path(source), tmp))
    else:
        sidecar_path(target).unlink(missing_ok=True)
    return target


class ScoreFloorInferer(DetectionInferer):
    """Detection forward with the box score threshold lowered to ``score_floor`` for the call.

    The validation evaluator shares the training's network, whose ``box_score_thresh`` (0.7) would hide the
    detections below it from the threshold choice. Lowering it only here leaves every other use of that
    network (e.g. the self-training teacher) as configured.

    Args:
        score_floor: the lowest detection score returned (0.05: the lowest threshold considered).
    """

    def __init__(self, score_floor: float = 0.05) -> None:
        super().__init__()
        self.score_floor = _threshold(score_floor, "score_floor")

    def __call__(self, inputs: list[torch.Tensor], network: Callable, *args: Any, **kwargs: Any) -> list[dict]:
        """Run ``network(inputs)`` with its RoI heads' ``score_thresh`` at ``score_floor``, then restore it."""
        heads = (network.module if hasattr(network, "module") else network).roi_heads
        previous, heads.score_thresh = heads.score_thresh, self.score_floor
        try:
            return super().__call__(inputs, network, *args, **kwargs)
        finally:
            heads.score_thresh = previous


class _ThenCall(BaseSaveHandler):
    """An :class:`AtomicDiskSaver` that calls ``after(path)`` once each file it saves is in place."""

    def __init__(self, saver: AtomicDiskSaver, after: Callable[[Path], None]) -> None:
        self.saver, self.after = saver, after

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Save, then call ``after`` with the saved file's path."""
        self.saver(checkpoint, filename, metadata)
        self.after(self.saver.dirname / (self.saver.filename or filename))

    def remove(self, filename: str) -> None:
        """As the wrapped saver."""
        self.saver.remove(filename)


class OperatingPointSaver(SafeCheckpointSaver):
    """The best-model saver (:class:`SafeCheckpointSaver`, key metric) that writes ``model.json`` after ``model.pt``.

    The sidecar (:func:`write_operating_point`) holds the operating threshold of the validation that made
    this ``model.pt`` the best, written only once that ``model.pt`` is in place, and never when the model is
    not saved.

    Args:
        args: as :class:`SafeCheckpointSaver` (``save_key_metric=True`` and a ``key_metric_filename``).
        operating_metric: the evaluator's :class:`~malignet_bundle.metrics.operating_point.OperatingPointF1`
            (its last choice is stored).
        kwargs: as :class:`SafeCheckpointSaver`.
    """

    def __init__(self, *args: Any, operating_metric: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._key_metric_checkpoint is None:
            raise ValueError("OperatingPointSaver saves the best model: give save_key_metric=True")
        saver = self._key_metric_checkpoint.save_handler
        self._key_metric_checkpoint.save_handler = _ThenCall(saver, self._write_operating_point)
        self.operating_metric = operating_metric
        self._epoch = 0

    def metrics_completed(self, engine: Engine) -> None:
        """Save ``model.pt`` (and then its sidecar) when the key metric improved."""
        self._epoch = int(engine.state.epoch)
        super().metrics_completed(engine)

    def _write_operating_point(self, path: Path) -> None:
        choice = getattr(self.operating_metric, "last_choice", None)
        if choice is None:
            raise RuntimeError(
                f"{path} was saved but the operating-point metric has no result: is it this evaluator's metric?"
            )
        write_operating_point(path, choice, self._epoch)
