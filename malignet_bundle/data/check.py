"""Dataset check: every problem of a datalist and its files in one pass, one line each, inputs untouched.

The same check guards training: :func:`checked_datalist` runs it at header level (no pixel decoded) and
refuses to return a datalist with errors, so a training stops before its first step with every unusable
file named, not at the first one its data loader meets. :func:`check_inference_inputs` checks what an
inference run would read instead (a file, a folder or a datalist split, no annotation needed).

A file whose views the NM reader could only assume by frame order (no view code or view text in the header)
is a warning here, counted in the summary, rather than the reader's Python warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from malignet_bundle.atomic_io import sha256_file
from malignet_bundle.data.annotations import AnnotationError, load_annotation
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.datalist import SPLITS, DatalistError, load_datalist
from malignet_bundle.data.nm_dicom import DicomInputError, InputFileError, read_nm_header, read_nm_views
from malignet_bundle.data.synthesize import GENERATOR_VERSION

__all__ = [
    "Problem",
    "CheckReport",
    "check_dataset",
    "check_inference_inputs",
    "checked_datalist",
    "duplicate_problems",
]

logger = logging.getLogger(__name__)

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

    @property
    def errors(self) -> list[Problem]:
        """The findings of severity "error"."""
        return [p for p in self.problems if p.severity == "error"]

    def add(self, severity: str, path: str | os.PathLike, reason: str) -> None:
        """Record a finding."""
        self.problems.append(Problem(severity, str(path), reason))


@dataclass
class _Image:
    """What the check keeps of one image file: its views, frame size and the keys that identify it."""

    views: list[str]
    view_source: str
    shape: tuple[int, int]
    identities: dict[str, str]


def _read_image(path: Path, decode_pixels: bool) -> _Image:
    """Read one image (header only, or decoded), with its identities; raises ``DicomInputError``."""
    identities = {"file content (sha256)": sha256_file(path)} if path.is_file() else {}
    if decode_pixels:
        with warnings.catch_warnings():
            # the reader's view-fallback warning: the check reports it as a counted warning of its own
            warnings.simplefilter("ignore", UserWarning)
            nm = read_nm_views(path)
        ds, views, source, shape = nm.dataset, nm.views, nm.view_source, tuple(nm.frames.shape[1:])
        # re-encoded or re-anonymised copies differ in bytes but not in pixels
        identities["pixel data"] = hashlib.sha256(nm.frames.tobytes()).hexdigest()
    else:
        header = read_nm_header(path)
        ds, views, source, shape = header.dataset, header.views, header.view_source, (header.rows, header.columns)
    if ds.get("SOPInstanceUID"):
        identities["SOPInstanceUID"] = str(ds.SOPInstanceUID)
    return _Image(views, source, shape, identities)


def _fallback_reason(views: list[str]) -> str:
    return f"no view code or view text in the header; assumed {views} by frame order"


def duplicate_problems(entries: list[dict]) -> list[tuple[str, str]]:
    """Files listed more than once where that makes the datalist wrong, as (file, reason) pairs.

    Entries are ``{"split", "image", "view", "patient_id", "identities": {kind: value}}``. Entries that share
    the image path or any identity (content hash, SOPInstanceUID, pixel hash) are one image. One image is
    wrong under several paths (a copy), in several splits (a test image seen in training), under several
    patient ids (the patient-level split cannot hold), or twice for one view of one split (trained on twice).
    A multi-frame file listed once per view, in one split, under one patient, is fine.
    """
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        keys = [("path", str(entry["image"]))] + [(k, v) for k, v in entry.get("identities", {}).items()]
        for key in keys:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(entries)):
        groups[find(i)].append(i)

    problems = []
    for members in groups.values():
        if len(members) < 2:
            continue
        group = [entries[i] for i in members]
        paths = list(dict.fromkeys(str(e["image"]) for e in group))
        reasons = []
        if len(paths) > 1:
            first = {k: v for e in group if str(e["image"]) == paths[0] for k, v in e.get("identities", {}).items()}
            shared = sorted(
                {
                    k
                    for e in group
                    if str(e["image"]) != paths[0]
                    for k, v in e.get("identities", {}).items()
                    if first.get(k) == v
                }
            )
            reasons.append(f"the same image as {', '.join(paths[1:])} (identical {' and '.join(shared) or 'path'})")
        splits = list(dict.fromkeys(e["split"] for e in group))
        if len(splits) > 1:
            reasons.append(f"listed in several splits {splits}")
        patients = list(dict.fromkeys(str(e["patient_id"]) for e in group if e.get("patient_id") is not None))
        if len(patients) > 1:
            reasons.append(f"listed under several patient ids {patients}")
        seen: dict[tuple[str, str | None], int] = defaultdict(int)
        for e in group:
            seen[(e["split"], e.get("view"))] += 1
        repeated = [f"{n} times for view {view!r} in '{split}'" for (split, view), n in seen.items() if n > 1]
        if repeated:
            reasons.append("listed " + ", ".join(repeated))
        if reasons:
            problems.append((paths[0], "duplicate image: " + "; ".join(reasons)))
    return problems


def _check_synthetic_version(dataset_dir: Path, report: CheckReport) -> None:
    """Warn when the folder holds synthetic data of another generator version than the current one.

    Its ``dataset.json`` (written by :func:`~malignet_bundle.data.synthesize.write_dataset`, recognised by its
    ``lesions_drawn``; a missing ``generator_version`` is version 1) says which. A folder kept from an earlier
    ``make data`` is reused as it is, so a user would otherwise train on the old scans without knowing.
    """
    summary_path = dataset_dir / "dataset.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return  # no summary, or another tool's: not synthetic data of this bundle
    if not isinstance(summary, dict) or "lesions_drawn" not in summary:
        return
    version = summary.get("generator_version", 1)
    if version != GENERATOR_VERSION:
        report.add(
            "warning",
            summary_path,
            f"synthetic data of generator version {version}, the current one is {GENERATOR_VERSION}; "
            "scripts/synthesize.py into a new folder (or `make data` after removing this one) makes it",
        )


def check_dataset(
    datalist_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    class_map: ClassMap,
    decode_pixels: bool = True,
    unlabeled_unreadable: str = "error",
) -> CheckReport:
    """Check a datalist and every file it names.

    Reports missing, unreadable or non-NM DICOM and every reason :mod:`malignet_bundle.data.nm_dicom`
    refuses a file for (colour, bit depth, frame count, implausible size, short pixel data, constant frames,
    repeated view codes), views not in the file, missing or malformed annotations, annotation/image size
    mismatches, unknown class names, polygons outside the image or with NaN/infinite coordinates, empty
    masks, annotated splits without labels, an empty labeled split, patients in more than one split, and
    duplicate images (by path, content hash, SOPInstanceUID, and pixel hash when decoding); warns about
    synthetic data of an older generator version. Files are opened read-only; nothing is written.

    Args:
        datalist_path: the datalist JSON.
        dataset_dir: the folder its paths are relative to.
        class_map: the bundle's class names.
        decode_pixels: decode every image (constant frames, pixel hash); False checks headers only.
        unlabeled_unreadable: severity of an unreadable unlabeled image: "error" for the data check,
            "warning" where training skips such scans (:func:`~malignet_bundle.data.datalist.drop_unreadable`).
    """
    report = CheckReport()
    try:
        datalist = load_datalist(datalist_path)
    except ValueError as e:
        report.add("error", datalist_path, str(e).split(": ", 1)[-1])
        return report
    dataset_dir = Path(dataset_dir)
    _check_synthetic_version(dataset_dir, report)
    images: dict[Path, _Image | None] = {}
    patients: dict[str, set[str]] = defaultdict(set)
    lesions: dict[str, int] = defaultdict(int)
    entries: list[dict] = []
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
            severity = unlabeled_unreadable if split == "unlabeled" else "error"
            if image_path not in images:
                try:
                    images[image_path] = _read_image(image_path, decode_pixels)
                except DicomInputError as e:
                    images[image_path] = None
                    report.add(severity, image_path, e.reason)
                except Exception as e:  # a reader bug must not hide the other files' problems
                    images[image_path] = None
                    report.add(severity, image_path, f"cannot be read ({type(e).__name__}: {e})")
            nm = images[image_path]
            identities = nm.identities if nm is not None else {}
            if nm is None and image_path.is_file():
                identities = {"file content (sha256)": sha256_file(image_path)}
            entries.append(
                {
                    "split": split,
                    "image": image_path,
                    "view": item.get("view"),
                    "patient_id": item.get("patient_id"),
                    "identities": identities,
                }
            )
            if nm is None:
                continue
            view = item.get("view")
            if view is not None and view not in nm.views:
                report.add("error", image_path, f"view {view!r} not in file (has {nm.views})")
                continue
            if nm.view_source == "fallback":
                report.add("warning", image_path, _fallback_reason(nm.views))
            if "label" not in item:
                if split in ANNOTATED_SPLITS:
                    report.add("error", where, f"'{split}' item has no 'label'")
                continue
            label_path = dataset_dir / item["label"]
            try:
                ann = load_annotation(label_path, nm.shape, view=view, image_file=item["image"], class_map=class_map)
            except AnnotationError as e:
                report.add("error", label_path, e.reason)
                continue
            except Exception as e:  # as above: name the file, go on with the others
                report.add("error", label_path, f"cannot be read ({type(e).__name__}: {e})")
                continue
            for problem in ann.problems:
                report.add("error", label_path, problem)
            for name in ann.class_names:
                lesions[class_map.name(class_map.label(name))] += 1

    for path, reason in duplicate_problems(entries):
        report.add("error", path, reason)
    for pid, splits in sorted(patients.items()):
        if len(splits) > 1:
            report.add("error", datalist_path, f"patient {pid} appears in several splits: {sorted(splits)}")
    report.lesions = dict(lesions)
    return report


def check_inference_inputs(
    source: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, split: str = "test"
) -> CheckReport:
    """Check what an inference run on ``source`` would read: every problem in one pass, inputs untouched.

    ``source`` is what ``configs/inference.json`` takes as ``input``: a DICOM file, a folder (files grouped
    into studies by StudyInstanceUID) or a datalist, whose ``split`` is read (e.g. ``unlabeled``: no item needs
    a label). Reported: a source with no study; every file the NM reader refuses, with its reason; files of
    one study that collide (the same view twice, other pixel spacing), naming both; the same image in two
    studies; and, as warnings, files whose views were assumed by frame order.

    Args:
        source: the file, folder or datalist JSON.
        dataset_dir: folder a datalist's paths are relative to (default: the datalist's folder).
        split: the datalist split to check.

    Returns:
        The findings; ``items`` counts ``studies`` and ``files``.
    """
    from malignet_bundle.engines.inference import collect_studies, plan_study

    report = CheckReport()
    try:
        studies = collect_studies(source, dataset_dir, split)
    except (OSError, ValueError, KeyError) as e:  # missing path, no DICOM file, bad datalist, unknown split
        report.add("error", source, str(e).removeprefix(f"{source}: "))
        return report
    entries: list[dict] = []
    warned: set[str] = set()
    for study in studies:
        for item in study.items:  # headers first: a fallback is reported even where the study fails below
            path = str(item["image"])
            try:
                header = read_nm_header(path)
            except InputFileError:
                continue  # plan_study names it
            if header.view_source == "fallback" and path not in warned:
                warned.add(path)
                report.add("warning", path, _fallback_reason(header.views))
        with warnings.catch_warnings():  # the reader's fallback warning, reported above
            warnings.simplefilter("ignore", UserWarning)
            try:
                planned = plan_study(study)
            except InputFileError as e:
                report.add("error", e.path, e.reason)
                continue
        for entry in planned:
            identities = {
                "file content (sha256)": sha256_file(entry.path),
                "pixel data": hashlib.sha256(entry.nm.frames.tobytes()).hexdigest(),
            }
            if entry.nm.dataset.get("SOPInstanceUID"):
                identities["SOPInstanceUID"] = str(entry.nm.dataset.SOPInstanceUID)
            entries.append(
                {
                    "split": "inference",
                    "image": entry.path,
                    "view": entry.view,
                    "patient_id": study.study_id,
                    "identities": identities,
                }
            )
    for path, reason in duplicate_problems(entries):
        report.add("error", path, reason)
    report.items = {"studies": len(studies), "files": len({str(item["image"]) for s in studies for item in s.items})}
    return report


def checked_datalist(
    datalist_path: str | os.PathLike, dataset_dir: str | os.PathLike, class_map: ClassMap
) -> dict[str, list[dict]]:
    """The datalist, once :func:`check_dataset` finds no error in it at header level (no pixel decoded).

    For the training config: every unusable file is named before the first step, all at once. Unreadable
    unlabeled scans are logged, not errors: training skips them. Pixel-level refusals (a constant frame) come
    from the NM reader when the dataset is cached.

    Raises:
        DatalistError: with one ``file: reason`` line per error.
    """
    report = check_dataset(datalist_path, dataset_dir, class_map, decode_pixels=False, unlabeled_unreadable="warning")
    for problem in report.problems:
        if problem.severity != "error":
            logger.warning("%s: %s", problem.path, problem.reason)
    if not report.ok:
        raise DatalistError(datalist_path, [(p.path, p.reason) for p in report.errors])
    return load_datalist(datalist_path)
