"""Inference writers as ignite handlers: each writes one kind of output of every study the evaluator predicts.

``configs/inference.json`` attaches them to its evaluator, which predicts one study per iteration and puts
its :class:`~malignet_bundle.outputs.prediction.StudyPrediction` in ``engine.state.output["prediction"]``
(None for a study that could not be read: the writers leave it to the run's summary). Each writes under
``<output_dir>/<study_id>/``, every file atomically, with the functions of :mod:`malignet_bundle.outputs`:

- :class:`LesionReportWriter`: ``report.json`` (:func:`~malignet_bundle.outputs.report.write_report`).
- :class:`OverlayWriter`: ``overlay.png`` (:func:`~malignet_bundle.outputs.overlay.save_study_overlay`).
- :class:`InstanceLabelWriter`: ``<view>_instances.nii.gz`` + ``.classes.json`` per view
  (:func:`~malignet_bundle.data.annotations.write_instance_label_image`).
- :class:`DicomSegWriter`: ``seg_<view>.dcm`` per view (:func:`~malignet_bundle.outputs.dicom_seg.write_dicom_segs`).

The module-level functions are what the handlers call, for one prediction outside an evaluator
(``engines/inference.write_study_outputs``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.outputs.prediction import StudyPrediction

__all__ = [
    "study_folder",
    "write_lesion_report",
    "write_overlay",
    "write_instance_labels",
    "write_segs",
    "StudyOutputWriter",
    "LesionReportWriter",
    "OverlayWriter",
    "InstanceLabelWriter",
    "DicomSegWriter",
]


def study_folder(output_dir: str | os.PathLike, study_id: str) -> Path:
    """``output_dir/<study_id>``, created if missing."""
    folder = Path(output_dir) / study_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_lesion_report(
    prediction: StudyPrediction, class_map: ClassMap, folder: str | os.PathLike, model: Mapping[str, Any] | None = None
) -> Path:
    """Write ``folder/report.json``; its metastasis verdict counts the class map's malignant class.

    Args:
        prediction: the study's lesions.
        class_map: label → class name; its ``malignant_label`` decides the verdict.
        folder: the study's output folder.
        model: what produced the lesions, copied into the report.

    Returns:
        The report's path.
    """
    from malignet_bundle.outputs.report import write_report

    path = Path(folder) / "report.json"
    model_info = dict(model) if model else None
    return write_report(prediction, class_map, path, malignant_label=class_map.malignant_label, model=model_info)


def write_overlay(prediction: StudyPrediction, class_map: ClassMap, folder: str | os.PathLike) -> Path:
    """Write ``folder/overlay.png``: both views as stored, lesions outlined by class; returns its path."""
    from malignet_bundle.outputs.overlay import save_study_overlay

    path = Path(folder) / "overlay.png"
    save_study_overlay(prediction, class_map, path)
    return path


def write_instance_labels(
    prediction: StudyPrediction, class_map: ClassMap, folder: str | os.PathLike
) -> dict[str, Path]:
    """Write ``folder/<view>_instances.nii.gz`` (+ ``.classes.json``) per view, re-importable as annotations.

    Instance k of a view's label image is lesion ``<view>-k`` of the report (overlaps: the later one shows).

    Returns:
        ``{"nifti_<view>": path}`` per view.
    """
    from malignet_bundle.data.annotations import write_instance_label_image

    written = {}
    for view in prediction.views:
        path = Path(folder) / f"{view.view}_instances.nii.gz"
        names = [class_map.name(int(label)) for label in view.labels]
        write_instance_label_image(path, view.masks, names, prediction.spacing)
        written[f"nifti_{view.view}"] = path
    return written


def write_segs(
    prediction: StudyPrediction, class_map: ClassMap, folder: str | os.PathLike, algorithm_version: str = "0.1.0"
) -> dict[str, Path]:
    """Write ``folder/seg_<view>.dcm`` per view, each referencing its frame of the source NM instance.

    Args:
        prediction: the study's lesions and source headers.
        class_map: the segments.
        folder: the study's output folder.
        algorithm_version: the bundle version recorded in the SEGs.

    Returns:
        ``{"seg_<view>": path}`` per view.
    """
    from malignet_bundle.outputs.dicom_seg import write_dicom_segs

    paths = write_dicom_segs(prediction, class_map, folder, algorithm_version)
    return {f"seg_{view.view}": path for view, path in zip(prediction.views, paths, strict=True)}


def _prediction_of(output: Mapping[str, Any]) -> StudyPrediction | None:
    return output.get("prediction")


class StudyOutputWriter:
    """Base of the writers: on every ``ITERATION_COMPLETED``, :meth:`write` the iteration's study prediction.

    Args:
        output_dir: the run's output folder; each study writes into ``output_dir/<study_id>``.
        class_map: label → class name (and colour), which every output names its lesions by.
        output_transform: engine output → the :class:`StudyPrediction` (None: nothing to write).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_map: ClassMap,
        output_transform: Callable[[Any], StudyPrediction | None] = _prediction_of,
    ) -> None:
        self.output_dir, self.class_map, self.output_transform = Path(output_dir), class_map, output_transform

    def attach(self, engine: Engine) -> None:
        """Write after every iteration of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the outputs of the iteration's study, if it has a prediction."""
        prediction = self.output_transform(engine.state.output)
        if prediction is not None:
            self.write(prediction, study_folder(self.output_dir, prediction.study_id))

    def write(self, prediction: StudyPrediction, folder: Path) -> Any:
        """Write this writer's outputs of ``prediction`` into ``folder``.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError


class LesionReportWriter(StudyOutputWriter):
    """``report.json`` per study (:func:`write_lesion_report`).

    Args:
        output_dir: the run's output folder.
        class_map: label → class name; its ``malignant_label`` decides the metastasis verdict.
        model: what produced the lesions (name, version, checkpoint, threshold), copied into every report.
        output_transform: engine output → the study prediction.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_map: ClassMap,
        model: Mapping[str, Any] | None = None,
        output_transform: Callable[[Any], StudyPrediction | None] = _prediction_of,
    ) -> None:
        super().__init__(output_dir, class_map, output_transform)
        self.model = model

    def write(self, prediction: StudyPrediction, folder: Path) -> Path:
        """Write the report; returns its path."""
        return write_lesion_report(prediction, self.class_map, folder, self.model)


class OverlayWriter(StudyOutputWriter):
    """``overlay.png`` per study (:func:`write_overlay`).

    Args:
        output_dir: the run's output folder.
        class_map: label → class name and colour.
        output_transform: engine output → the study prediction.
    """

    def write(self, prediction: StudyPrediction, folder: Path) -> Path:
        """Write the picture; returns its path."""
        return write_overlay(prediction, self.class_map, folder)


class InstanceLabelWriter(StudyOutputWriter):
    """``<view>_instances.nii.gz`` and its ``.classes.json`` per view (:func:`write_instance_labels`).

    Args:
        output_dir: the run's output folder.
        class_map: label → class name, written into the sidecar.
        output_transform: engine output → the study prediction.
    """

    def write(self, prediction: StudyPrediction, folder: Path) -> dict[str, Path]:
        """Write the label images; returns ``{"nifti_<view>": path}``."""
        return write_instance_labels(prediction, self.class_map, folder)


class DicomSegWriter(StudyOutputWriter):
    """``seg_<view>.dcm`` per view (:func:`write_segs`).

    Args:
        output_dir: the run's output folder.
        class_map: the segments.
        algorithm_version: the bundle version recorded in the SEGs.
        output_transform: engine output → the study prediction.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_map: ClassMap,
        algorithm_version: str = "0.1.0",
        output_transform: Callable[[Any], StudyPrediction | None] = _prediction_of,
    ) -> None:
        super().__init__(output_dir, class_map, output_transform)
        self.algorithm_version = str(algorithm_version)

    def write(self, prediction: StudyPrediction, folder: Path) -> dict[str, Path]:
        """Write the SEGs; returns ``{"seg_<view>": path}``."""
        return write_segs(prediction, self.class_map, folder, self.algorithm_version)
