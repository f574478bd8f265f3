"""A training datalist from an annotation server's studies: label maps in, per-view instance annotations out.

MONAI Label keeps one image file per study and, once an annotator saves, one class label map per study
(:mod:`malignet_bundle.outputs.label_map`). The bundle trains on per-view items with instance annotations,
so each saved map is split into its views, each view's classes into connected lesions, and those are
written as instance-label NIfTI files (with their class sidecars) in a work folder. The studies and the
saved maps are only read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from malignet_bundle.atomic_io import write_json_atomic
from malignet_bundle.data.annotations import write_instance_label_image
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.nm_dicom import DicomInputError, read_nm_views
from malignet_bundle.outputs.label_map import label_map_instances, read_label_map

__all__ = ["datalist_from_label_maps"]

logger = logging.getLogger(__name__)


def _patient_id(dataset: object, fallback: str) -> str:
    return str(getattr(dataset, "PatientID", "") or fallback)


def datalist_from_label_maps(
    labeled: Sequence[tuple[str, str | os.PathLike, str | os.PathLike]],
    unlabeled: Sequence[tuple[str, str | os.PathLike]],
    work_dir: str | os.PathLike,
    class_map: ClassMap,
    validation_fraction: float = 0.2,
) -> dict[str, list[dict]]:
    """Write ``work_dir/datalist.json`` (and the instance annotations it names) and return the datalist.

    Args:
        labeled: ``(study id, DICOM file, label map)`` of every annotated study.
        unlabeled: ``(study id, DICOM file)`` of the studies without a saved label; unreadable ones are logged
            with the reason and left out.
        work_dir: where the annotations and the datalist go.
        class_map: class ids of the label maps → class names.
        validation_fraction: share of the annotated studies (at least one) held out for validation; with a
            single annotated study it is used for both, and a warning says so.

    Raises:
        ValueError: naming the file, for an annotated study whose DICOM or label map cannot be used, and
            when no study is annotated.
    """
    if not labeled:
        raise ValueError("no annotated study: save at least one final label before training")
    work_dir = Path(work_dir)
    studies: list[list[dict]] = []
    for study_id, image, label in sorted(labeled, key=lambda s: s[0]):
        nm = read_nm_views(image)  # DicomInputError (a ValueError) names the file
        frames = len(nm.frames)
        label_map = read_label_map(label, (frames, *nm.frames[0].shape))
        items = []
        for index, view in enumerate(nm.views):
            masks, labels = label_map_instances(label_map[index])
            path = work_dir / "labels" / f"{study_id}_{view}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_instance_label_image(path, masks, [class_map.name(int(c)) for c in labels], nm.spacing)
            items.append(
                {"image": str(image), "view": view, "patient_id": _patient_id(nm.dataset, study_id), "label": str(path)}
            )
        studies.append(items)
    held_out = max(1, round(validation_fraction * len(studies))) if len(studies) > 1 else 0
    if held_out == 0:
        logger.warning("one annotated study: it is used for training and validation alike")
    train_studies = studies[: len(studies) - held_out]
    validation_studies = studies[len(studies) - held_out :] or studies
    unlabeled_items = []
    for study_id, image in unlabeled:
        try:
            nm = read_nm_views(image)
        except DicomInputError as e:
            logger.warning("unlabeled study %s left out: %s", study_id, e)
            continue
        pid = _patient_id(nm.dataset, study_id)
        unlabeled_items += [{"image": str(image), "view": view, "patient_id": pid} for view in nm.views]
    datalist = {
        "labeled": [item for study in train_studies for item in study],
        "unlabeled": unlabeled_items,
        "validation": [item for study in validation_studies for item in study],
        "test": [],
    }
    write_json_atomic(datalist, work_dir / "datalist.json")
    return datalist
