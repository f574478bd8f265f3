"""DICOM Segmentation (highdicom) of a study's lesions: one BINARY SEG instance per view, referencing its NM frame.

Why: a SEG is what a PACS or viewer (OHIF, 3D Slicer, MIM) overlays on the source scan, so the lesions reach
the reading room without the bundle. What is written:

* One segment per class of the class map, segment number = class label, segment label = class name; frames
  are kept even when empty, so every SEG of every study has the same segment list and segment ``k`` always
  means class ``k``. Category "Morphologically abnormal structure" (SCT 49755003); type from
  :data:`CLASS_CODES` for the default classes, else "Lesion" (SCT 52988006). Algorithm: AUTOMATIC,
  "MaligNet", family "Artificial Intelligence" (DCM 123110), the version passed in.
* The frame matches the stored source frame pixel for pixel (a posterior view is not mirrored), so each
  segment frame references its source image (and, for a multi-frame source, its frame) with
  SpatialLocationsPreserved YES. That reference is the SEG's whole geometry: it has no Frame of Reference and
  no pixel measures (below).

Source classes: every file the NM reader accepts, i.e. the NM Image IOD with one or two frames and
single-frame images of other classes with Modality NM (vendors store processed whole-body scans as Secondary
Capture), with or without a FrameOfReferenceUID. The SEG is valid for each (dciodvfy: no error, no warning)
and reads back with ``highdicom.seg.segread``:

* ``ReferencedFrameNumber`` only where the source's IOD is multi-frame (it carries ``NumberOfFrames``, as NM
  does even with one frame); for a single-frame class such as Secondary Capture the standard forbids it.
* No Frame of Reference. A planar projection has no patient coordinate system; a vendor's
  FrameOfReferenceUID on one defines no plane position or orientation, and copying it into the SEG would
  make Plane Position, Plane Orientation and a SliceThickness mandatory, all of which would be invented.
  The SEG IOD needs no Frame of Reference when its frames reference their source images.
* No Pixel Measures. Without a Frame of Reference they are optional, and highdicom's reader refuses pixel
  measures without a SliceThickness, which a projection does not have. The pixel spacing stays in the source
  the SEG references (and in the report, which gives areas in mm²).

How it is built: highdicom 0.28 builds a SEG of a source without a Frame of Reference from *one source
frame only* (``_Image._init_multiframe_image`` raises "Only a single frame is supported when the source
image has no Frame of Reference UID" for a two-frame NM instance and for two single-frame instances alike).
So there is one SEG per view, built from an in-memory, one-frame copy of its
source header without the Frame of Reference (never written anywhere; the source file is only ever read).
highdicom reads the pixel spacing of a source whose IOD is multi-frame from an enhanced-style
``SharedFunctionalGroupsSequence`` that NM images do not have, so the copy of a multi-frame source carries
one; the pixel measures highdicom derives from it are then removed from the result, and its references are
pointed at the view's frame of the real source (``ReferencedFrameNumber``, frame ``frame_index + 1``). All
SEGs of a study share one series. For a one-file-per-view study this is one SEG per source file; for a
two-frame file, two SEGs referencing frames 1 and 2 of the same instance.

Reading back (:func:`read_dicom_seg_masks`) is ``highdicom.seg.segread``, the reader any highdicom user has.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import NamedTuple

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from malignet_bundle.atomic_io import save_dicom_atomic
from malignet_bundle.data.class_map import ClassMap, normalise_class_name
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction

__all__ = [
    "SEGMENT_CATEGORY",
    "CLASS_CODES",
    "GENERIC_LESION_CODE",
    "SegFrameMasks",
    "segment_descriptions",
    "build_dicom_segs",
    "write_dicom_segs",
    "read_dicom_seg_masks",
]

# CID 7150 "Segmentation Property Categories".
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
# Segmented property types of the default classes (thesis Table 3), SNOMED CT morphologic abnormalities.
# CID 7159 "Lesion Segmentation Types" has the first two; the last two are the SNOMED CT morphologic
# abnormalities of the same name (the "disorder" concept 417746004 behind pydicom's TraumaticAbnormality
# keyword is not a morphology, so it is not used).
CLASS_CODES: dict[str, hd.sr.CodedConcept] = {
    # A malignant lesion on a bone scan is a bone metastasis in all but rare cases; the bundle's verdict is
    # "metastasis". SCT 14799000 "Neoplasm, metastatic (morphologic abnormality)".
    "malignant": hd.sr.CodedConcept.from_code(codes.SCT.NeoplasmSecondary),
    "infection_inflammation": hd.sr.CodedConcept.from_code(codes.SCT.Inflammation),  # 409774005
    "degenerative_change": hd.sr.CodedConcept("107669003", "SCT", "Degenerative abnormality"),
    "post_trauma": hd.sr.CodedConcept("19130008", "SCT", "Traumatic abnormality"),
}
# Any class without a known code: generic lesion, the class name stays the segment label.
GENERIC_LESION_CODE = hd.sr.CodedConcept.from_code(codes.SCT.Lesion)  # 52988006, CID 7159
_ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110


class SegFrameMasks(NamedTuple):
    """Masks of one SEG written by :func:`write_dicom_segs`, by class.

    Attributes:
        sop_instance_uid: SOPInstanceUID of the source NM instance.
        frame_number: 1-based frame of the source instance the SEG covers.
        masks: (H, W, S) bool, channel ``s`` = segment number ``s + 1`` (= class label ``s + 1`` for SEGs
            written here).
    """

    sop_instance_uid: str
    frame_number: int
    masks: np.ndarray


def segment_descriptions(class_map: ClassMap, algorithm_version: str) -> list[hd.seg.SegmentDescription]:
    """One AUTOMATIC segment description per class of ``class_map``, segment number = label.

    Args:
        class_map: the classes; names are the segment labels, and pick the type code in :data:`CLASS_CODES`.
        algorithm_version: version recorded in the algorithm identification.
    """
    algorithm = hd.AlgorithmIdentificationSequence(name="MaligNet", family=_ALGORITHM_FAMILY, version=algorithm_version)
    return [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=name[:64],  # LO
            segmented_property_category=SEGMENT_CATEGORY,
            segmented_property_type=CLASS_CODES.get(normalise_class_name(name), GENERIC_LESION_CODE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for label, name in enumerate(class_map.names, start=1)
    ]


def _pixel_spacing(ds: Dataset, study: StudyPrediction) -> list[float]:
    spacing = ds.get("PixelSpacing")
    return [float(v) for v in spacing] if spacing and len(spacing) == 2 else [float(v) for v in study.spacing]


def _is_multiframe_class(ds: Dataset) -> bool:
    """Whether the source's IOD is multi-frame: such IODs carry ``NumberOfFrames`` (type 1), others never do."""
    return "NumberOfFrames" in ds


# what the in-memory source copy leaves out: the pixels (never needed) and the Frame of Reference (module
# docstring: a projection has no patient coordinate system)
_LEFT_OUT = {0x7FE00010, 0x00200052, 0x00201040}  # PixelData, FrameOfReferenceUID, PositionReferenceIndicator


def _one_frame_source(ds: Dataset, pixel_spacing: list[float]) -> Dataset:
    """In-memory header of one view that highdicom accepts (see the module docstring); never written anywhere."""
    source = Dataset()
    for element in ds:
        if element.tag not in _LEFT_OUT:
            source.add(copy.deepcopy(element))
    if _is_multiframe_class(ds):
        source.NumberOfFrames = 1
        measures = Dataset()
        measures.PixelMeasuresSequence = hd.PixelMeasuresSequence(pixel_spacing=pixel_spacing, slice_thickness=None)
        source.SharedFunctionalGroupsSequence = [measures]
    return source


def _drop_pixel_measures(seg: hd.seg.Segmentation) -> None:
    """Remove the pixel measures highdicom derived from the source (module docstring: why)."""
    for group in [*seg.SharedFunctionalGroupsSequence, *seg.get("PerFrameFunctionalGroupsSequence", [])]:
        if "PixelMeasuresSequence" in group:
            del group.PixelMeasuresSequence


def _reference_frame(seg: hd.seg.Segmentation, frame_number: int) -> None:
    """Point the source-image references of ``seg`` at frame ``frame_number`` of the (multi-frame) source.

    highdicom puts the same item objects into SourceImageSequence and ReferencedSeriesSequence; the frame
    number belongs only to the former (Image SOP Instance Reference Macro), so those items are replaced by
    copies first.
    """
    items = []
    for item in seg.SourceImageSequence:
        item = copy.deepcopy(item)
        item.ReferencedFrameNumber = frame_number
        items.append(item)
    seg.SourceImageSequence = items
    for group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in group.get("DerivationImageSequence", []):
            for item in derivation.SourceImageSequence:
                item.ReferencedFrameNumber = frame_number


def _view_pixels(view: ViewPrediction, num_classes: int) -> np.ndarray:
    """(1, H, W, C) class unions of the view's instance masks (stacked-segments layout)."""
    height, width = np.asarray(view.image).shape[-2:]
    pixels = np.zeros((1, height, width, num_classes), dtype=bool)
    for mask, label in zip(np.asarray(view.masks, dtype=bool), np.asarray(view.labels), strict=True):
        if not 1 <= int(label) <= num_classes:
            raise ValueError(f"{view.view}: label {int(label)} outside the class map's 1..{num_classes}")
        pixels[0, ..., int(label) - 1] |= mask
    return pixels


def build_dicom_segs(
    study: StudyPrediction,
    class_map: ClassMap,
    algorithm_version: str = "0.1.0",
    series_number: int = 901,
    series_instance_uid: str | None = None,
) -> list[hd.seg.Segmentation]:
    """Build one BINARY SEG per view of ``study``, in the order of ``study.views``, all in one new series.

    Args:
        study: lesions in whole-body stored-pixel coordinates, with each view's source header (pixel data
            may be absent; :func:`malignet_bundle.data.nm_dicom.read_nm_views` removes it).
        class_map: the segments, one per class (segment number = label).
        algorithm_version: recorded as the algorithm and software version.
        series_number: SeriesNumber of the SEG series.
        series_instance_uid: SeriesInstanceUID of the SEG series; new when None.

    Returns:
        Segmentation instances; the ``i``-th covers ``study.views[i]`` and references ``study.datasets[i]``,
        at its frame ``frame_index + 1`` when that source is multi-frame.

    Raises:
        ValueError: a mask does not match its source frame's size, or a label is outside the class map.
    """
    series_instance_uid = series_instance_uid or hd.UID()
    descriptions = segment_descriptions(class_map, algorithm_version)
    segs = []
    for number, (view, ds) in enumerate(zip(study.views, study.datasets, strict=True), start=1):
        pixels = _view_pixels(view, class_map.num_classes)
        if pixels.shape[1:3] != (int(ds.Rows), int(ds.Columns)):
            raise ValueError(f"{view.view}: masks are {pixels.shape[1:3]}, the source frame {ds.Rows}x{ds.Columns}")
        seg = hd.seg.Segmentation(
            source_images=[_one_frame_source(ds, _pixel_spacing(ds, study))],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer="MaligNet bundle",
            manufacturer_model_name="MaligNet",
            software_versions=str(algorithm_version),
            device_serial_number="none",
            content_label="LESIONS",
            content_description=f"MaligNet bone lesions, {view.view} view",
            series_description="MaligNet lesions",
            omit_empty_frames=False,
        )
        _drop_pixel_measures(seg)
        if _is_multiframe_class(ds):
            _reference_frame(seg, int(view.frame_index) + 1)
        # General Image, Type 2C without a Frame of Reference: a single-view source's own value applies to the
        # SEG; a two-view header has one value for both views, so none is copied from it.
        single_view = int(ds.get("NumberOfFrames", 1) or 1) == 1
        seg.PatientOrientation = ds.get("PatientOrientation", "") if single_view else ""
        segs.append(seg)
    return segs


def write_dicom_segs(
    study: StudyPrediction,
    class_map: ClassMap,
    folder: str | os.PathLike,
    algorithm_version: str = "0.1.0",
) -> list[Path]:
    """Write :func:`build_dicom_segs` as ``folder/seg_<view>.dcm``, each atomically.

    Args:
        study: lesions and source headers of one study.
        class_map: the segments.
        folder: output folder (created when missing).
        algorithm_version: recorded in the SEGs.

    Returns:
        The written paths, in the order of ``study.views``.
    """
    folder = Path(folder)
    paths = []
    for view, seg in zip(study.views, build_dicom_segs(study, class_map, algorithm_version), strict=True):
        path = folder / f"seg_{view.view}.dcm"
        save_dicom_atomic(seg, path)
        paths.append(path)
    return paths


def read_dicom_seg_masks(path: str | os.PathLike) -> SegFrameMasks:
    """Read a SEG that covers one source frame (as written here) with ``highdicom.seg.segread``.

    Args:
        path: the SEG file.

    Returns:
        The source instance and frame it references (1 for a single-frame source, which records no frame
        number) and its (H, W, S) bool masks by segment.

    Raises:
        ValueError: the SEG references no source frame or more than one.
    """
    seg = hd.seg.segread(path)
    references = {
        (str(item.ReferencedSOPInstanceUID), item.get("ReferencedFrameNumber"))
        for group in seg.PerFrameFunctionalGroupsSequence
        for derivation in group.get("DerivationImageSequence", [])
        for item in derivation.SourceImageSequence
    }
    if len(references) != 1:
        raise ValueError(f"{path}: references {len(references)} source frames, expected one")
    ((uid, frame),) = references
    segments = list(seg.segment_numbers)
    if frame is None:
        masks = seg.get_pixels_by_source_instance([uid], segment_numbers=segments)
    else:
        masks = seg.get_pixels_by_source_frame(uid, [int(frame)], segment_numbers=segments)
    return SegFrameMasks(uid, 1 if frame is None else int(frame), masks[0].astype(bool))
