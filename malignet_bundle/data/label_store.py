"""A training datalist from an annotation server's studies: label maps in, per-view instance annotations out.

MONAI Label keeps one image file per study and, once an annotator saves, one class label map per study
(:mod:`malignet_bundle.outputs.label_map`). The bundle trains on per-view items with instance annotations,
so each saved map is split into its views, each view's classes into connected lesions, and those are
written as instance-label NIfTI files (with their class sidecars) in a work folder. The studies and the
saved maps are only read.

Study ids come from the annotation server's requests and name files here (``<work_dir>/labels/<id>_<view>``),
so an id must be one plain file name (:func:`check_study_id`) and every path it makes must resolve inside
the work folder, or nothing is written. The MONAI Label app makes the same check at its door
(``monailabel_app/lib/safety.py``); this one holds for any other caller.
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

__all__ = ["datalist_from_label_maps", "check_study_id"]

logger = logging.getLogger(__name__)

# a file name's limit on common filesystems is 255 bytes; leave room for the view, suffix and temporary prefix
_NAME_MAX = 200


def check_study_id(study_id: object) -> str:
    """A study id that is one plain file name, returned as it is.

    Raises:
        ValueError: naming the id, for anything but a non-empty string; an absolute path; a path separator
            (slash, backslash) or ``:``; ``..`` anywhere; a leading ``.``; a control character; more than 200
            characters.
    """
    if not isinstance(study_id, str) or not study_id:
        raise ValueError(f"study id {study_id!r}: an id is a non-empty string")
    problems = [
        (os.path.isabs(study_id), "is an absolute path"),
        ("/" in study_id or "\\" in study_id, "contains a path separator"),
        (".." in study_id, "contains '..'"),
        (study_id.startswith("."), "starts with '.'"),
        (":" in study_id, "contains ':'"),
        (any(ord(c) < 32 or ord(c) == 127 for c in study_id), "contains a control character"),
        (len(study_id) > _NAME_MAX, f"is longer than {_NAME_MAX} characters"),
    ]
    for failed, reason in problems:
        if failed:
            raise ValueError(f"study id {study_id[:80]!r} {reason}: a study id is one plain file name")
    return study_id


def _inside(folder: Path, name: str) -> Path:
    """``folder / name`` resolved, if it stays inside ``folder`` (resolved); else ValueError."""
    root = folder.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"{name!r} resolves to {path}, outside {root}")
    return path


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
            single annotated study it is used for both, and a warning says so. The held-out studies are the
            last in id order among those with lesions, as long as one with lesions is left to train on: a
            validation split of lesion-free studies cannot tell a trained epoch from an early one (every
            epoch scores the same F1), so the best-epoch choice would keep the first; a warning says when
            it cannot be avoided.

    Raises:
        ValueError: naming the id, for a study id that is not one plain file name (before anything is
            written); naming the file, for an annotated study whose DICOM or label map cannot be used; and
            when no study is annotated.
    """
    if not labeled:
        raise ValueError("no annotated study: save at least one final label before training")
    for entry in [*labeled, *unlabeled]:  # all ids first: a bad one writes nothing at all
        check_study_id(entry[0])
    work_dir = Path(work_dir)
    labels_dir = work_dir / "labels"
    studies: list[list[dict]] = []
    has_lesions: list[bool] = []
    for study_id, image, label in sorted(labeled, key=lambda s: s[0]):
        nm = read_nm_views(image)  # DicomInputError (a ValueError) names the file
        frames = len(nm.frames)
        label_map = read_label_map(label, (frames, *nm.frames[0].shape))
        items = []
        for index, view in enumerate(nm.views):
            masks, labels = label_map_instances(label_map[index])
            labels_dir.mkdir(parents=True, exist_ok=True)
            path = _inside(labels_dir, f"{study_id}_{view}.nii.gz")
            write_instance_label_image(path, masks, [class_map.name(int(c)) for c in labels], nm.spacing)
            items.append(
                {"image": str(image), "view": view, "patient_id": _patient_id(nm.dataset, study_id), "label": str(path)}
            )
        studies.append(items)
        has_lesions.append(bool(label_map.any()))
    held_out = max(1, round(validation_fraction * len(studies))) if len(studies) > 1 else 0
    if held_out == 0:
        logger.warning("one annotated study: it is used for training and validation alike")
    with_lesions = [k for k, has in enumerate(has_lesions) if has]
    if held_out and len(with_lesions) > held_out:
        validation_indices = set(with_lesions[-held_out:])
    else:
        validation_indices = set(range(len(studies) - held_out, len(studies)))
        if held_out and not any(has_lesions[k] for k in validation_indices):
            logger.warning(
                "the validation studies have no lesions (%d of %d annotated studies have any): the best epoch "
                "cannot be chosen on them; annotate more studies with lesions",
                len(with_lesions),
                len(studies),
            )
    train_studies = [study for k, study in enumerate(studies) if k not in validation_indices]
    validation_studies = [study for k, study in enumerate(studies) if k in validation_indices] or studies
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
