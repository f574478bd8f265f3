"""Dataset check: every problem of a datalist and its files in one pass, one line each, inputs untouched."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from malignet_bundle.data.annotations import AnnotationError, load_annotation
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import SPLITS, load_datalist
from malignet_bundle.data.nm_dicom import DicomInputError, NMViews, read_nm_views

__all__ = ["Problem", "CheckReport", "check_dataset"]

ANNOTATED_SPLITS = ("labeled", "validation", "test")


@dataclass
class Problem:
    """One finding: ``severity`` is "error" (the item cannot be used) or "warning"."""

    severity: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.path}: {self.reason}"


@dataclass
class CheckReport:
    """All findings of :func:`check_dataset` plus what was checked."""

    problems: list[Problem] = field(default_factory=list)
    items: dict[str, int] = field(default_factory=dict)
    lesions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    def add(self, severity: str, path: str | os.PathLike, reason: str) -> None:
        """Record a finding."""
        self.problems.append(Problem(severity, str(path), reason))


def check_dataset(datalist_path: str | os.PathLike, dataset_dir: str | os.PathLike, class_map: ClassMap) -> CheckReport:
    """Check a datalist and every file it names.

    Reports missing, unreadable or non-NM DICOM, views not in the file, missing or malformed annotations,
    annotation/image size mismatches, unknown class names, polygons outside the image, empty masks,
    annotated splits without labels, an empty labeled split, and patients in more than one split.
    Files are opened read-only; nothing is written.
    """
    report = CheckReport()
    try:
        datalist = load_datalist(datalist_path)
    except ValueError as e:
        report.add("error", datalist_path, str(e).split(": ", 1)[-1])
        return report
    dataset_dir = Path(dataset_dir)
    images: dict[Path, NMViews | None] = {}
    patients: dict[str, set[str]] = defaultdict(set)
    lesions: dict[str, int] = defaultdict(int)
    if not datalist["labeled"]:
        report.add("error", datalist_path, "the 'labeled' split is empty; training needs annotated scans")

    for split in SPLITS:
        report.items[split] = len(datalist[split])
        for k, item in enumerate(datalist[split]):
            where = f"{datalist_path}[{split}][{k}]"
            if not isinstance(item, dict) or "image" not in item:
                report.add("error", where, "item has no 'image'")
                continue
            if "patient_id" not in item:
                report.add("error", where, "item has no 'patient_id' (needed to keep splits apart by patient)")
            else:
                patients[str(item["patient_id"])].add(split)
            image_path = dataset_dir / item["image"]
            if image_path not in images:
                try:
                    images[image_path] = read_nm_views(image_path)
                except DicomInputError as e:
                    images[image_path] = None
                    report.add("error", image_path, e.reason)
            nm = images[image_path]
            if nm is None:
                continue
            view = item.get("view")
            if view is not None and view not in nm.views:
                report.add("error", image_path, f"view {view!r} not in file (has {nm.views})")
                continue
            if nm.view_source == "fallback" and len(nm.views) > 1:
                report.add("warning", image_path, f"no view code in the header; assumed {nm.views} by frame order")
            if "label" not in item:
                if split in ANNOTATED_SPLITS:
                    report.add("error", where, f"'{split}' item has no 'label'")
                continue
            label_path = dataset_dir / item["label"]
            shape = tuple(nm.frames.shape[1:])
            try:
                ann = load_annotation(label_path, shape, view=view, image_file=item["image"], class_map=class_map)
            except AnnotationError as e:
                report.add("error", label_path, e.reason)
                continue
            for problem in ann.problems:
                report.add("error", label_path, problem)
            for name in ann.class_names:
                lesions[class_map.name(class_map.label(name))] += 1

    for pid, splits in sorted(patients.items()):
        if len(splits) > 1:
            report.add("error", datalist_path, f"patient {pid} appears in several splits: {sorted(splits)}")
    report.lesions = dict(lesions)
    return report
