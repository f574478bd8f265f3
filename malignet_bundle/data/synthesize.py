"""Synthetic whole-body bone scintigraphy: studies as DICOM NM, COCO lesion annotations, a datalist.

One study = one patient, anterior and posterior views of a 1024×256 matrix at 2.26 mm (the GE "Whole Body
Bone" geometry of the reference scan), Poisson counts at a per-study count level. Every study is drawn from
its own random stream ``default_rng([seed, index])``, so a dataset is deterministic by seed whatever the
number of workers, and growing a split does not change the studies already made.

Generator versions (``version``; the dataset records the one that made it in ``dataset.json``, in every
study's COCO file under ``info`` and in its DICOM ``SoftwareVersions``):

- 1: one Gaussian system blur (8–12 mm FWHM) for every depth, no scatter, no room background, hot spots
  (bladder, injection sites, urine) up to ten times brighter than bone. Kept reproducible bit for bit.
- 2: a gamma-camera model (:mod:`malignet_bundle.data.camera`): collimator blur growing with each
  structure's distance from each detector plus a per-study extra blur, scatter, room background; hot-spot
  levels, soft tissue, count level and body widths set against real GE whole-body scans
  (:data:`malignet_bundle.data.phantom.HOT_SPOTS_V2`); measured by :mod:`malignet_bundle.data.realism`.
"""

from __future__ import annotations

import dataclasses
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
from malignet_bundle.data.camera import GammaCamera
from malignet_bundle.data.class_map import DEFAULT_CLASSES, ClassMap
from malignet_bundle.data.lesions import LesionSpec, lesion_patch, sample_lesions
from malignet_bundle.data.nm_dicom import build_nm_dataset
from malignet_bundle.data.phantom import (
    HOT_SPOTS_V1,
    HOT_SPOTS_V2,
    Canvas,
    HotSpotLevels,
    Patient,
    build_skeleton,
    sample_patient,
)

__all__ = [
    "SyntheticStudy",
    "synthesize_study",
    "write_study",
    "write_dataset",
    "SPLITS",
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
]

logger = logging.getLogger(__name__)

SPLITS = ("labeled", "unlabeled", "validation", "test")
VIEWS = ("anterior", "posterior")
GENERATOR_VERSIONS = (1, 2)
# The version made when none is asked for: version 2, whose scans match real ones on every statistic of the
# realism report (docs/BENCHMARKS.md); version 1 stays available to repeat the results read on it.
GENERATOR_VERSION = 2


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
        generator_version: the generator version that made the study.
        acquisition: the camera geometry drawn for the study (version 2: skin gaps, background rate).
    """

    patient: Patient
    frames: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    class_names: dict[str, list[str]]
    chest_box: dict[str, tuple[float, float, float, float]]
    lesions: list[LesionSpec] = field(default_factory=list)
    spacing_mm: float = 2.26
    generator_version: int = 1
    acquisition: dict[str, float] = field(default_factory=dict)

    @property
    def metastatic(self) -> bool:
        """Patient-level metastasis status: at least one malignant lesion anywhere."""
        return any(spec.label == "malignant" for spec in self.lesions)


def _add_distractors(
    canvas: Canvas,
    patient: Patient,
    rng: np.random.Generator,
    spacing_mm: float,
    hot_spots: HotSpotLevels = HOT_SPOTS_V1,
) -> None:
    """Non-lesion hot spots a reader learns to ignore: urine contamination, soft-tissue uptake."""
    rows, cols = canvas.shape
    h = patient.height_mm / spacing_mm
    top = patient.top_mm / spacing_mm
    cx = cols / 2 + patient.x_shift_mm / spacing_mm
    if rng.random() < 0.12:  # urine contamination on skin or clothing, groin to thighs
        r = top + rng.uniform(0.5, 0.62) * h
        c = cx + rng.uniform(-0.08, 0.08) * h
        radius = rng.uniform(3, 8) / spacing_mm
        canvas.ellipse((r, c), (radius, radius), rng.uniform(*hot_spots.urine_contamination), 0.05, 14)
    if rng.random() < 0.1:  # soft-tissue uptake (calcification, breast, lung effusion) anywhere in the trunk
        r = top + rng.uniform(0.2, 0.45) * h
        c = cx + rng.uniform(-0.07, 0.07) * h
        canvas.ellipse(
            (r, c),
            (rng.uniform(8, 25) / spacing_mm, rng.uniform(8, 25) / spacing_mm),
            rng.uniform(0.2, 0.8),
            rng.uniform(0.1, 0.9),
            22,
        )


def synthesize_study(
    seed: int | list[int] | np.random.Generator,
    patient_id: str,
    shape: tuple[int, int] = (1024, 256),
    spacing_mm: float = 2.26,
    signed_fraction: float = 0.15,
    version: int | None = None,
    camera: GammaCamera | None = None,
    hot_spots: HotSpotLevels | None = None,
) -> SyntheticStudy:
    """Draw one study: anatomy, lesions, camera (blur, scatter, background), Poisson counts.

    Args:
        seed: random seed, seed sequence, or generator.
        patient_id: written into the DICOM header.
        shape: (rows, cols) of the whole-body matrix.
        spacing_mm: square pixel size.
        signed_fraction: share of studies stored as signed 16-bit with a few negative pixel values.
        version: generator version (module docstring); ``None`` is :data:`GENERATOR_VERSION`.
        camera: version 2's camera; default :class:`~malignet_bundle.data.camera.GammaCamera()`.
        hot_spots: version 2's hot-spot levels; default :data:`~malignet_bundle.data.phantom.HOT_SPOTS_V2`.

    Returns:
        The study.

    Raises:
        ValueError: for an unknown version, or a camera or hot-spot levels given to version 1 (which has
            neither).
    """
    version = GENERATOR_VERSION if version is None else version
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown generator version {version}; known: {list(GENERATOR_VERSIONS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if version == 2:
        return _synthesize_v2(
            rng, patient_id, shape, spacing_mm, signed_fraction, camera or GammaCamera(), hot_spots or HOT_SPOTS_V2
        )
    if camera is not None or hot_spots is not None:
        raise ValueError("generator version 1 has no camera model or configurable hot spots; use version=2")
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
        rs, cs = (
            slice(max(r0, 0), min(r0 + field_.shape[0], shape[0])),
            slice(max(c0, 0), min(c0 + field_.shape[1], shape[1])),
        )
        if rs.start >= rs.stop or cs.start >= cs.stop:
            continue
        crop = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
        a_ant, a_post = canvas.attenuation(spec.site.depth, spec.site.thickness_cm)
        # Lesion uptake is relative to the unattenuated bone uptake under it.
        local = (
            max(
                float(unblurred["anterior"][rs, cs].max()) / a_ant, float(unblurred["posterior"][rs, cs].max()) / a_post
            )
            * 0.5
        )
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
    # vendor background subtraction leaves a few negative pixels
    means = {view: blurred[view] * scale for view in VIEWS}
    frames, stored_masks, chest = _acquire(means, masks, skeleton.chest_box, shape, rng, signed, 0.2)
    return SyntheticStudy(patient, frames, stored_masks, names, chest, lesions, spacing_mm)


def _acquire(
    means: dict[str, np.ndarray],
    masks: dict[str, list[np.ndarray]],
    chest_box: tuple[float, float, float, float],
    shape: tuple[int, int],
    rng: np.random.Generator,
    signed: bool,
    negative_mean: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[float, float, float, float]]]:
    """Count images, masks and chest boxes of both views as stored: Poisson counts, the posterior mirrored.

    Args:
        means: view → expected counts per pixel.
        masks: view → lesion masks (rows, cols) visible in that view.
        chest_box: the chest box (x0, y0, x1, y1) in the anterior view's coordinates.
        shape: (rows, cols).
        rng: the study's random stream (one Poisson draw per view, then the negative pixels of a signed study).
        signed: stored as signed 16-bit, with Poisson(``negative_mean``) subtracted from every pixel.
        negative_mean: the mean subtracted in a signed study.

    Returns:
        frames (uint16, or int16 when ``signed``), stacked masks (N, rows, cols) and chest boxes, per view.
    """
    frames, stored_masks, chest = {}, {}, {}
    x0, y0, x1, y1 = chest_box
    for view in VIEWS:
        counts = rng.poisson(means[view])
        if signed:
            counts = counts - rng.poisson(negative_mean, size=counts.shape)
        stack = np.stack(masks[view]) if masks[view] else np.zeros((0, *shape), dtype=bool)
        if view == "posterior":  # as acquired: seen from behind, the patient's left is on the image's left
            counts, stack = counts[:, ::-1], stack[:, :, ::-1]
            box = (shape[1] - x1, y0, shape[1] - x0, y1)
        else:
            box = (x0, y0, x1, y1)
        frames[view] = np.clip(counts, -32768 if signed else 0, 32767 if signed else 65535).astype(
            np.int16 if signed else np.uint16
        )
        stored_masks[view] = np.ascontiguousarray(stack)
        chest[view] = tuple(float(v) for v in box)
    return frames, stored_masks, chest


def _lesion_window(
    spec: LesionSpec, spacing_mm: float, shape: tuple[int, int], pad: int
) -> tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]] | None:
    """The lesion's unit-peak field padded by ``pad`` pixels (room for the blur), its image window and crop."""
    field_, (r0, c0) = lesion_patch(spec, spacing_mm)
    field_ = np.pad(field_, pad)
    r0, c0 = int(r0) - pad, int(c0) - pad
    rs = slice(max(r0, 0), min(r0 + field_.shape[0], shape[0]))
    cs = slice(max(c0, 0), min(c0 + field_.shape[1], shape[1]))
    if rs.start >= rs.stop or cs.start >= cs.stop:
        return None
    return field_, (rs, cs), (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))


def _synthesize_v2(
    rng: np.random.Generator,
    patient_id: str,
    shape: tuple[int, int],
    spacing_mm: float,
    signed_fraction: float,
    camera: GammaCamera,
    hot_spots: HotSpotLevels,
) -> SyntheticStudy:
    """Generator version 2: the phantom in depth layers, each view seen through :class:`GammaCamera`."""
    patient = sample_patient(rng, patient_id, version=2, hot_spots=hot_spots)
    canvas = Canvas(shape, layer_mm=camera.layer_mm)
    skeleton = build_skeleton(canvas, patient, spacing_mm, rng, hot_spots)
    _add_distractors(canvas, patient, rng, spacing_mm, hot_spots)
    lesions = sample_lesions(rng, patient, skeleton)
    acquisition = camera.draw_geometry(rng)
    gaps = {"anterior": acquisition["anterior_gap_mm"], "posterior": acquisition["posterior_gap_mm"]}
    layers = {"anterior": canvas.anterior_layers, "posterior": canvas.posterior_layers}
    extra = acquisition["extra_fwhm_mm"]
    primary = {v: camera.project(layers[v], gaps[v], spacing_mm, extra) for v in VIEWS}
    background = {v: a.copy() for v, a in primary.items()}
    unblurred = {"anterior": canvas.anterior, "posterior": canvas.posterior}
    # room for the widest blur a lesion can get (the far side of a thick body) around its patch
    pad = int(np.ceil(4 * camera.psf_sigma_px(600.0, spacing_mm, extra)))
    masks: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    names: dict[str, list[str]] = {v: [] for v in VIEWS}
    for spec in lesions:
        window = _lesion_window(spec, spacing_mm, shape, pad)
        if window is None:
            continue
        field_, (rs, cs), crop = window
        site = spec.site
        a_ant, a_post = canvas.attenuation(site.depth, site.thickness_cm)
        # Lesion uptake is relative to the unattenuated bone uptake under it, as in version 1.
        local = (
            max(
                float(unblurred["anterior"][rs, cs].max()) / a_ant, float(unblurred["posterior"][rs, cs].max()) / a_post
            )
            * 0.5
        )
        amplitude = spec.contrast * hot_spots.lesion_contrast_scale * max(local, 1.0)
        depth_mm = {
            "anterior": site.depth * site.thickness_cm * 10.0,
            "posterior": (1.0 - site.depth) * site.thickness_cm * 10.0,
        }
        for view, attenuation in (("anterior", a_ant), ("posterior", a_post)):
            # each view sees the lesion through its own distance: sharper on the side it is nearer to
            lesion = camera.blur(field_ * amplitude, depth_mm[view] + gaps[view], spacing_mm, extra)[crop]
            if lesion.max() <= 0:
                continue
            primary[view][rs, cs] += lesion * attenuation
            footprint = lesion >= 0.35 * lesion.max()
            peak = np.unravel_index(int(np.argmax(lesion)), lesion.shape)
            if footprint.sum() >= 5 and lesion[peak] * attenuation >= 0.3 * background[view][rs, cs][peak]:
                mask = np.zeros(shape, dtype=bool)
                mask[rs, cs] = footprint
                masks[view].append(mask)
                names[view].append(spec.label)

    detected = {v: camera.add_scatter(primary[v], spacing_mm) for v in VIEWS}
    rate = acquisition["background_per_pixel"]
    # the study's count level includes the room background, which does not scale with the activity
    source_counts = max(patient.total_counts - rate * shape[0] * shape[1], 0.5 * patient.total_counts)
    scale = source_counts / float(detected["anterior"].sum())
    signed = rng.random() < signed_fraction
    # vendor processing leaves a few negative pixels (a few hundred in the view)
    means = {view: detected[view] * scale + rate for view in VIEWS}
    frames, stored_masks, chest = _acquire(means, masks, skeleton.chest_box, shape, rng, signed, 0.002)
    return SyntheticStudy(
        patient, frames, stored_masks, names, chest, lesions, spacing_mm, generator_version=2, acquisition=acquisition
    )


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
    common = dict(
        spacing_mm=study.spacing_mm,
        patient_id=pid,
        patient_sex=study.patient.sex,
        patient_age=study.patient.age,
        signed=study.frames["anterior"].dtype == np.int16,
        seed_date=study_date,
    )
    # the generator version travels with every file, so a study taken out of its dataset still says what made it
    software = f"malignet_bundle synthetic generator version {study.generator_version}"
    if layout == "multiframe":
        ds = build_nm_dataset([study.frames[v] for v in VIEWS], list(VIEWS), **common)
        ds.SoftwareVersions = software
        save_dicom_atomic(ds, out_dir / "studies" / f"{pid}.dcm")
        files = {v: f"studies/{pid}.dcm" for v in VIEWS}
    elif layout == "single":
        from pydicom.uid import generate_uid

        study_uid, files = generate_uid(), {}
        for view in VIEWS:
            ds = build_nm_dataset([study.frames[view]], [view], study_uid=study_uid, **common)
            ds.SoftwareVersions = software
            files[view] = f"studies/{pid}_{view[:4].upper()}.dcm"
            save_dicom_atomic(ds, out_dir / files[view])
    else:
        raise ValueError(f"layout must be 'multiframe' or 'single', got {layout!r}")

    images, annotations = [], []
    for k, view in enumerate(VIEWS):
        image, anns = to_coco_image(
            k + 1,
            files[view],
            view,
            study.frames[view].shape,
            study.masks[view],
            study.class_names[view],
            class_map,
            study.chest_box[view],
            first_annotation_id=len(annotations) + 1,
        )
        images.append(image)
        annotations.extend(anns)
    label_file = f"labels/{pid}.json"
    document = coco_document(images, annotations, class_map)
    document["info"] = {
        "description": "MaligNet synthetic whole-body bone scan",
        "generator_version": study.generator_version,
        **study.acquisition,
    }
    write_json_atomic(document, out_dir / label_file)
    return [
        {"image": files[v], "view": v, "patient_id": pid, "label": label_file, "metastasis": study.metastatic}
        for v in VIEWS
    ]


def _make_one(args: tuple) -> tuple[list[dict], dict]:
    index, seed, out_dir, layout, shape, spacing, version = args
    pid = f"SYN{index:05d}"
    study = synthesize_study([seed, index], pid, shape=shape, spacing_mm=spacing, version=version)
    class_map = ClassMap(DEFAULT_CLASSES)
    items = write_study(
        study,
        out_dir,
        class_map,
        layout=layout,
        study_date=datetime.date(2020, 1, 1) + datetime.timedelta(days=index % 1500),
    )
    stats = {
        "lesions": Counter(s.label for s in study.lesions),
        "annotated": Counter(n for v in VIEWS for n in study.class_names[v]),
        "metastatic": study.metastatic,
        "child": study.patient.is_child,
    }
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
    version: int | None = None,
) -> dict:
    """Generate a full dataset and its ``datalist.json``; returns the summary also written to ``dataset.json``.

    Splits are by patient (one study per patient). Every study gets a COCO file, unlabeled ones too, so that
    benchmarks can move studies between splits; the datalist's ``unlabeled`` items carry no ``label`` key.
    The summary records the generator version (and version 2's camera settings and hot-spot levels).

    Args:
        out_dir: dataset folder.
        labeled: studies of the labeled split.
        unlabeled: studies of the unlabeled split.
        validation: studies of the validation split.
        test: studies of the test split.
        seed: dataset seed; study ``i`` is drawn from ``default_rng([seed, i])``.
        layout: "multiframe" or "single" (:func:`write_study`).
        shape: (rows, cols) of the whole-body matrix.
        spacing_mm: pixel size.
        workers: processes.
        progress: show a progress bar.
        version: generator version; ``None`` is :data:`GENERATOR_VERSION`.

    Returns:
        The summary.

    Raises:
        ValueError: for an unknown generator version.
    """
    version = GENERATOR_VERSION if version is None else int(version)
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown generator version {version}; known: {list(GENERATOR_VERSIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"labeled": labeled, "validation": validation, "test": test, "unlabeled": unlabeled}
    order = [split for split, n in counts.items() for _ in range(n)]
    jobs = [(i + 1, seed, str(out_dir), layout, tuple(shape), spacing_mm, version) for i in range(len(order))]
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
        "generator_version": version,
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
    if version == 2:
        summary["camera"] = dataclasses.asdict(GammaCamera())
        summary["hot_spots"] = dataclasses.asdict(HOT_SPOTS_V2)
    write_json_atomic(summary, out_dir / "dataset.json")
    return summary


def _progress(iterable: object, total: int, enabled: bool) -> object:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="synthesising studies", unit="study")
