"""Synthetic whole-body bone scintigraphy: studies as DICOM NM, COCO lesion annotations, a datalist.

One study = one patient, anterior and posterior views of a 1024×256 matrix at 2.26 mm (the GE "Whole Body
Bone" geometry of the reference scan), Poisson counts at a per-study count level. Every study is drawn from
its own random stream ``default_rng([seed, index])``, so a dataset is deterministic by seed whatever the
number of workers, and growing a split does not change the studies already made.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from malignet_bundle.atomic_io import save_dicom_atomic, write_json_atomic
from malignet_bundle.data.annotations import coco_document, to_coco_image
from malignet_bundle.data.class_map import DEFAULT_CLASSES, ClassMap
from malignet_bundle.data.lesions import LesionSpec, lesion_patch, sample_lesions
from malignet_bundle.data.nm_dicom import build_nm_dataset
from malignet_bundle.data.phantom import Canvas, Patient, build_skeleton, sample_patient

__all__ = ["SyntheticStudy", "synthesize_study", "write_study", "write_dataset", "SPLITS"]

logger = logging.getLogger(__name__)

SPLITS = ("labeled", "unlabeled", "validation", "test")
VIEWS = ("anterior", "posterior")
GENERATOR_VERSION = 1


@dataclass
class SyntheticStudy:
    """One synthetic study, everything in stored-pixel coordinates (posterior mirrored as acquired).

    Attributes:
        patient: the body parameters.
        frames: view → integer count image (uint16, or int16 for a "vendor-processed" study).
        masks: view → bool (N, rows, cols) of lesions visible in that view.
        class_names: view → class name per mask.
        chest_box: view → (x0, y0, x1, y1).
        lesions: every lesion drawn, visible or not.
        spacing_mm: pixel spacing.
    """

    patient: Patient
    frames: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    class_names: dict[str, list[str]]
    chest_box: dict[str, tuple[float, float, float, float]]
    lesions: list[LesionSpec] = field(default_factory=list)
    spacing_mm: float = 2.26

    @property
    def metastatic(self) -> bool:
        """Patient-level metastasis status: at least one malignant lesion anywhere."""
        return any(spec.label == "malignant" for spec in self.lesions)


def _add_distractors(canvas: Canvas, patient: Patient, rng: np.random.Generator, spacing_mm: float) -> None:
    """Non-lesion hot spots a reader learns to ignore: urine contamination, soft-tissue uptake."""
    rows, cols = canvas.shape
    h = patient.height_mm / spacing_mm
    top = patient.top_mm / spacing_mm
    cx = cols / 2 + patient.x_shift_mm / spacing_mm
    if rng.random() < 0.12:  # urine contamination on skin or clothing, groin to thighs
        r = top + rng.uniform(0.5, 0.62) * h
        c = cx + rng.uniform(-0.08, 0.08) * h
        canvas.ellipse((r, c), (rng.uniform(3, 8) / spacing_mm,) * 2, rng.uniform(5, 30), 0.05, 14)
    if rng.random() < 0.1:  # soft-tissue uptake (calcification, breast, lung effusion) anywhere in the trunk
        r = top + rng.uniform(0.2, 0.45) * h
        c = cx + rng.uniform(-0.07, 0.07) * h
        canvas.ellipse((r, c), (rng.uniform(8, 25) / spacing_mm, rng.uniform(8, 25) / spacing_mm),
                       rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.9), 22)


def synthesize_study(
    seed: int | list[int] | np.random.Generator,
    patient_id: str,
    shape: tuple[int, int] = (1024, 256),
    spacing_mm: float = 2.26,
    signed_fraction: float = 0.15,
) -> SyntheticStudy:
    """Draw one study: anatomy, lesions, system blur, Poisson counts.

    Args:
        seed: random seed, seed sequence, or generator.
        patient_id: written into the DICOM header.
        shape: (rows, cols) of the whole-body matrix.
        spacing_mm: square pixel size.
        signed_fraction: share of studies stored as signed 16-bit with a few negative pixel values.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    patient = sample_patient(rng, patient_id)
    canvas = Canvas(shape)
    skeleton = build_skeleton(canvas, patient, spacing_mm, rng)
    _add_distractors(canvas, patient, rng, spacing_mm)
    lesions = sample_lesions(rng, patient, skeleton)

    sigma = rng.uniform(1.5, 2.3)  # system resolution, ≈8–12 mm FWHM at 2.26 mm pixels
    unblurred = {"anterior": canvas.anterior, "posterior": canvas.posterior}
    blurred = {v: ndimage.gaussian_filter(a, sigma) for v, a in unblurred.items()}
    background = {v: a.copy() for v, a in blurred.items()}
    masks: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    names: dict[str, list[str]] = {v: [] for v in VIEWS}
    for spec in lesions:
        field_, (r0, c0) = lesion_patch(spec, spacing_mm)
        r0, c0 = int(r0), int(c0)
        rs, cs = slice(max(r0, 0), min(r0 + field_.shape[0], shape[0])), slice(max(c0, 0),
                                                                               min(c0 + field_.shape[1], shape[1]))
        if rs.start >= rs.stop or cs.start >= cs.stop:
            continue
        crop = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
        a_ant, a_post = canvas.attenuation(spec.site.depth, spec.site.thickness_cm)
        # Lesion uptake is relative to the unattenuated bone uptake under it.
        local = max(float(unblurred["anterior"][rs, cs].max()) / a_ant, float(unblurred["posterior"][rs, cs].max())
                    / a_post) * 0.5
        amplitude = spec.contrast * max(local, 1.0)
        lesion = ndimage.gaussian_filter(field_ * amplitude, sigma, mode="constant")[crop]
        if lesion.max() <= 0:
            continue
        footprint = lesion >= 0.35 * lesion.max()
        peak = np.unravel_index(int(np.argmax(lesion)), lesion.shape)
        for view, attenuation in (("anterior", a_ant), ("posterior", a_post)):
            blurred[view][rs, cs] += lesion * attenuation
            bg = background[view][rs, cs][peak]
            if footprint.sum() >= 5 and lesion[peak] * attenuation >= 0.3 * bg:
                mask = np.zeros(shape, dtype=bool)
                mask[rs, cs] = footprint
                masks[view].append(mask)
                names[view].append(spec.label)

    scale = patient.total_counts / float(blurred["anterior"].sum())
    signed = rng.random() < signed_fraction
    frames, stored_masks, chest = {}, {}, {}
    x0, y0, x1, y1 = skeleton.chest_box
    for view in VIEWS:
        counts = rng.poisson(blurred[view] * scale)
        if signed:  # vendor background subtraction leaves a few negative pixels
            counts = counts - rng.poisson(0.2, size=counts.shape)
        stack = np.stack(masks[view]) if masks[view] else np.zeros((0, *shape), dtype=bool)
        if view == "posterior":  # as acquired: seen from behind, the patient's left is on the image's left
            counts, stack = counts[:, ::-1], stack[:, :, ::-1]
            box = (shape[1] - x1, y0, shape[1] - x0, y1)
        else:
            box = (x0, y0, x1, y1)
        frames[view] = np.clip(counts, -32768 if signed else 0, 32767 if signed else 65535).astype(
            np.int16 if signed else np.uint16)
        stored_masks[view] = np.ascontiguousarray(stack)
        chest[view] = tuple(float(v) for v in box)
    return SyntheticStudy(patient, frames, stored_masks, names, chest, lesions, spacing_mm)


def write_study(
    study: SyntheticStudy,
    out_dir: str | os.PathLike,
    class_map: ClassMap,
    layout: str = "multiframe",
    study_date: datetime.date | None = None,
) -> list[dict]:
    """Write a study's DICOM and COCO files under ``out_dir``; return its datalist items (one per view).

    Args:
        study: what :func:`synthesize_study` made.
        out_dir: dataset root; files go to ``studies/`` and ``labels/``.
        class_map: class names → COCO category ids.
        layout: "multiframe" (one NM file with both views, the usual vendor export) or "single"
            (one single-frame NM file per view).
        study_date: StudyDate to write.
    """
    out_dir = Path(out_dir)
    pid = study.patient.patient_id
    common = dict(spacing_mm=study.spacing_mm, patient_id=pid, patient_sex=study.patient.sex,
                  patient_age=study.patient.age, signed=study.frames["anterior"].dtype == np.int16,
                  seed_date=study_date)
    if layout == "multiframe":
        ds = build_nm_dataset([study.frames[v] for v in VIEWS], list(VIEWS), **common)
        save_dicom_atomic(ds, out_dir / "studies" / f"{pid}.dcm")
        files = {v: f"studies/{pid}.dcm" for v in VIEWS}
    elif layout == "single":
        from pydicom.uid import generate_uid

        study_uid, files = generate_uid(), {}
        for view in VIEWS:
            ds = build_nm_dataset([study.frames[view]], [view], study_uid=study_uid, **common)
            files[view] = f"studies/{pid}_{view[:4].upper()}.dcm"
            save_dicom_atomic(ds, out_dir / files[view])
    else:
        raise ValueError(f"layout must be 'multiframe' or 'single', got {layout!r}")

    images, annotations = [], []
    for k, view in enumerate(VIEWS):
        image, anns = to_coco_image(k + 1, files[view], view, study.frames[view].shape, study.masks[view],
                                    study.class_names[view], class_map, study.chest_box[view],
                                    first_annotation_id=len(annotations) + 1)
        images.append(image)
        annotations.extend(anns)
    label_file = f"labels/{pid}.json"
    write_json_atomic(coco_document(images, annotations, class_map), out_dir / label_file)
    return [{"image": files[v], "view": v, "patient_id": pid, "label": label_file,
             "metastasis": study.metastatic} for v in VIEWS]


def _make_one(args: tuple) -> tuple[list[dict], dict]:
    index, seed, out_dir, layout, shape, spacing = args
    pid = f"SYN{index:05d}"
    study = synthesize_study([seed, index], pid, shape=shape, spacing_mm=spacing)
    class_map = ClassMap(DEFAULT_CLASSES)
    items = write_study(study, out_dir, class_map, layout=layout,
                        study_date=datetime.date(2020, 1, 1) + datetime.timedelta(days=index % 1500))
    stats = {"lesions": Counter(s.label for s in study.lesions),
             "annotated": Counter(n for v in VIEWS for n in study.class_names[v]),
             "metastatic": study.metastatic, "child": study.patient.is_child}
    return items, stats


def write_dataset(
    out_dir: str | os.PathLike,
    labeled: int,
    unlabeled: int,
    validation: int,
    test: int,
    seed: int = 0,
    layout: str = "multiframe",
    shape: tuple[int, int] = (1024, 256),
    spacing_mm: float = 2.26,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Generate a full dataset and its ``datalist.json``; returns the summary also written to ``dataset.json``.

    Splits are by patient (one study per patient). Every study gets a COCO file, unlabeled ones too, so that
    benchmarks can move studies between splits; the datalist's ``unlabeled`` items carry no ``label`` key.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"labeled": labeled, "validation": validation, "test": test, "unlabeled": unlabeled}
    order = [split for split, n in counts.items() for _ in range(n)]
    jobs = [(i + 1, seed, str(out_dir), layout, tuple(shape), spacing_mm) for i in range(len(order))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_make_one, jobs, chunksize=8)
            results = list(_progress(results, len(jobs), progress))
    else:
        results = list(_progress(map(_make_one, jobs), len(jobs), progress))

    datalist: dict[str, list[dict]] = {s: [] for s in SPLITS}
    lesions, annotated = Counter(), Counter()
    metastatic = children = 0
    for split, (items, stats) in zip(order, results, strict=True):
        if split == "unlabeled":
            items = [{k: v for k, v in it.items() if k not in ("label", "metastasis")} for it in items]
        datalist[split].extend(items)
        lesions.update(stats["lesions"])
        annotated.update(stats["annotated"])
        metastatic += stats["metastatic"]
        children += stats["child"]
    write_json_atomic(datalist, out_dir / "datalist.json")
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "layout": layout,
        "shape": list(shape),
        "spacing_mm": spacing_mm,
        "studies": counts,
        "metastatic_patients": metastatic,
        "children": children,
        "lesions_drawn": dict(lesions),
        "lesion_annotations_all_views": dict(annotated),
    }
    write_json_atomic(summary, out_dir / "dataset.json")
    return summary


def _progress(iterable: object, total: int, enabled: bool) -> object:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="synthesising studies", unit="study")

