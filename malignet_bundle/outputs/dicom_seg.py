"""DICOM Segmentation (highdicom) of a study's lesions, one SEG instance per view, referencing the source NM frame.

Segments: one per class of the class map, segment number = class label, BINARY, frames kept even when empty,
so a viewer shows the same segment list for every study and segment ``k`` always means class ``k``.

Why one instance per view: planar whole-body NM has no Frame of Reference (no patient coordinate system), and
highdicom 0.28 builds a SEG of such a source only from one source frame (``_init_multiframe_image``: "Only a
single frame is supported when the source image has no Frame of Reference UID"); it also reads the pixel
spacing of a multi-frame-IOD source from an enhanced-style SharedFunctionalGroupsSequence that NM does not
have. So each view's SEG is built from an in-memory one-frame copy of the source header carrying the view's
PixelSpacing as pixel measures, and the references in the result then name the view's frame of the real
source (``ReferencedFrameNumber``). The source file itself is never written to. Both instances share one
SEG series.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from malignet_bundle.data.class_map import ClassMap, normalise_class_name
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction

__all__ = ["CLASS_CODES", "build_dicom_segs", "write_dicom_segs", "read_dicom_seg_masks"]

# SNOMED CT segmented-property types of the default classes (thesis Table 3).
CLASS_CODES = {
    "malignant": codes.SCT.Metastasis,
    "infection_inflammation": codes.SCT.Inflammation,
    "degenerative_change": hd.sr.CodedConcept("107669003", "SCT", "Degenerative abnormality"),
    "post_trauma": codes.SCT.TraumaticAbnormality,
}
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence


def _one_frame_source(ds: Dataset) -> Dataset:
    """In-memory header highdicom accepts for one view (see the module docstring); never written anywhere."""
    source = copy.deepcopy(ds)
    if "PixelData" in source:
        del source.PixelData
    source.NumberOfFrames = 1
    measures = Dataset()
    measures.PixelMeasuresSequence = hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in ds.PixelSpacing], slice_thickness=None
    )
    source.SharedFunctionalGroupsSequence = [measures]
    return source


def _segment_descriptions(class_map: ClassMap, algorithm_version: str) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(name="MaligNet", version=algorithm_version, family=ALGORITHM_FAMILY)
    return [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=CLASS_CODES.get(normalise_class_name(name), codes.SCT.Lesion),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for label, name in enumerate(class_map.names, start=1)
    ]


def _point_at_frame(seg: hd.seg.Segmentation, frame_number: int) -> None:
    """Make every source-image reference of ``seg`` name frame ``frame_number`` of the source."""
    items = list(seg.get("SourceImageSequence", []))
    for group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in group.get("DerivationImageSequence", []):
            items += list(derivation.get("SourceImageSequence", []))
    for item in items:
        item.ReferencedFrameNumber = frame_number


def build_dicom_segs(
    study: StudyPrediction,
    class_map: ClassMap,
    algorithm_version: str = "0.1.0",
    series_number: int = 901,
) -> list[tuple[ViewPrediction, hd.seg.Segmentation]]:
    """One BINARY SEG per view of ``study``, all in one new series.

    Args:
        study: lesions in whole-body stored-pixel coordinates, with each view's source header.
        class_map: the segments (one per class, segment number = label).
        algorithm_version: recorded in the segments' algorithm identification.
        series_number: SeriesNumber of the SEG series.
    """
    series_uid = hd.UID()
    descriptions = _segment_descriptions(class_map, algorithm_version)
    segs = []
    for number, (view, ds) in enumerate(zip(study.views, study.datasets, strict=True), start=1):
        height, width = view.image.shape
        pixels = np.zeros((1, height, width, class_map.num_classes), dtype=bool)
        for mask, label in zip(view.masks, view.labels, strict=True):
            pixels[0, ..., int(label) - 1] |= np.asarray(mask, dtype=bool)
        seg = hd.seg.Segmentation(
            source_images=[_one_frame_source(ds)],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer="MaligNet bundle",
            manufacturer_model_name="MaligNet",
            software_versions=algorithm_version,
            device_serial_number="none",
            series_description=f"MaligNet lesions ({view.view})",
            omit_empty_frames=False,
        )
        _point_at_frame(seg, int(view.frame_index) + 1)
        # Type 2C without a Frame of Reference: the source's when it has one, else present and empty.
        seg.PatientOrientation = ds.get("PatientOrientation", "") or ""
        segs.append((view, seg))
    return segs


def write_dicom_segs(
    study: StudyPrediction, class_map: ClassMap, folder: str | os.PathLike, algorithm_version: str = "0.1.0"
) -> list[Path]:
    """Write ``seg_<view>.dcm`` for every view into ``folder``, each atomically; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for view, seg in build_dicom_segs(study, class_map, algorithm_version):
        path = folder / f"seg_{view.view}.dcm"
        tmp = path.with_name(f".tmp.{path.name}")
        seg.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def read_dicom_seg_masks(path: str | os.PathLike) -> tuple[str, int, np.ndarray]:
    """Read a SEG written here: (source SOPInstanceUID, source frame number, (H, W, C) bool per class).

    Channel ``k`` (0-based) is class label ``k + 1``. Read with pydicom, frame by frame through the
    SegmentIdentificationSequence: highdicom 0.28's reader insists on a SliceThickness in the pixel
    measures, which a planar NM source does not have and the standard does not require here (dciodvfy
    passes the file).
    """
    ds = pydicom.dcmread(path)
    groups = ds.PerFrameFunctionalGroupsSequence
    reference = groups[0].DerivationImageSequence[0].SourceImageSequence[0]
    frames = ds.pixel_array.reshape(len(groups), int(ds.Rows), int(ds.Columns))
    masks = np.zeros((int(ds.Rows), int(ds.Columns), len(ds.SegmentSequence)), dtype=bool)
    for frame, group in zip(frames, groups, strict=True):
        masks[..., int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber) - 1] |= frame.astype(bool)
    return str(reference.ReferencedSOPInstanceUID), int(reference.ReferencedFrameNumber), masks
