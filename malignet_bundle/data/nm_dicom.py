"""Whole-body NM DICOM: write the synthetic studies, read vendor files view by view.

Reading goes through pydicom, whose pixel-data plugins (pylibjpeg, pyjpegls, gdcm) decode JPEG Lossless,
JPEG-LS, JPEG 2000 and RLE. Views are identified from the header, in this order:

1. ``DetectorVector`` → ``DetectorInformationSequence[i].ViewCodeSequence`` (code value or meaning);
2. per-frame text: ``DetectorInformationSequence[i]`` has no code → ``ImageID`` / ``SeriesDescription`` /
   ``ImageComments`` / ``ProtocolName`` containing ANT / POST words (single-view files);
3. fallback, with a warning: a two-frame file is taken as frame 1 anterior, frame 2 posterior (the order
   GE and Siemens whole-body acquisitions write); a one-frame file with no cue is anterior.

Stored posterior frames are as acquired (patient's left on the image's left); mirroring to the anterior
orientation is a transform (:class:`malignet_bundle.transforms.SelectViewd`), so annotations drawn on the
stored pixels stay valid.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from malignet_bundle.atomic_io import atomic_path, save_dicom_atomic
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    NuclearMedicineImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "InputFileError",
    "DicomInputError",
    "NMViews",
    "VIEW_CODES",
    "COMPRESSED_SYNTAXES",
    "read_nm_views",
    "build_nm_dataset",
    "write_compressed_copy",
]

logger = logging.getLogger(__name__)

# DICOM CID 26 "Nuclear Medicine Projection" (SNOMED CT).
VIEW_CODES = {"anterior": ("399321004", "SCT", "Anterior projection"),
              "posterior": ("399001007", "SCT", "Posterior projection")}
_VIEW_WORDS = {"anterior": re.compile(r"\bANT(ERIOR)?\b|\bANT[_\-]|_ANT\b", re.I),
               "posterior": re.compile(r"\bPOST(ERIOR)?\b|\bPOST[_\-]|_POST\b|\bPOS\b", re.I)}

COMPRESSED_SYNTAXES = {
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}


class InputFileError(ValueError):
    """A file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DicomInputError(InputFileError):
    """A DICOM file that cannot be used."""


@dataclass
class NMViews:
    """Frames of one NM file with their views.

    Attributes:
        frames: float32 array (n_frames, rows, cols) of counts as stored (negatives clipped to 0).
        views: view name per frame, "anterior" or "posterior".
        spacing: (row, col) pixel spacing in mm from ``PixelSpacing``.
        view_source: how the views were identified: "view-code", "text" or "fallback".
        dataset: the header, without pixel data.
    """

    frames: np.ndarray
    views: list[str]
    spacing: tuple[float, float]
    view_source: str
    dataset: Dataset

    def frame(self, view: str) -> np.ndarray:
        """Return the frame of ``view``; raises ``KeyError`` naming the views present."""
        if view not in self.views:
            raise KeyError(f"view {view!r} not in file (has {self.views})")
        return self.frames[self.views.index(view)]


def _view_from_code(item: Dataset) -> str | None:
    for code in item.get("ViewCodeSequence", []):
        for view, (value, _, meaning) in VIEW_CODES.items():
            if str(code.get("CodeValue", "")) == value or meaning.split()[0].lower() in str(
                code.get("CodeMeaning", "")
            ).lower():
                return view
    return None


def _view_from_text(ds: Dataset) -> str | None:
    for keyword in ("ImageID", "SeriesDescription", "ImageComments", "ProtocolName"):
        text = str(ds.get(keyword, "") or "")
        hits = [view for view, pattern in _VIEW_WORDS.items() if pattern.search(text)]
        if len(hits) == 1:
            return hits[0]
    return None


def identify_views(ds: Dataset, n_frames: int) -> tuple[list[str], str]:
    """Return the view of every frame and which rule found it (see the module docstring)."""
    detectors = ds.get("DetectorInformationSequence", [])
    vector = ds.get("DetectorVector", None)
    vector = [] if vector is None else [int(v) for v in (vector if isinstance(vector, (list, tuple)) or
                                                         hasattr(vector, "__iter__") else [vector])]
    if len(vector) != n_frames:
        vector = list(range(1, n_frames + 1)) if len(detectors) == n_frames else [1] * n_frames
    views = [_view_from_code(detectors[i - 1]) if 0 < i <= len(detectors) else None for i in vector]
    if all(views) and (n_frames == 1 or len(set(views)) == n_frames):
        return views, "view-code"
    if n_frames == 1:
        text_view = _view_from_text(ds)
        if text_view:
            return [text_view], "text"
        return ["anterior"], "fallback"
    if n_frames == 2:
        return ["anterior", "posterior"], "fallback"
    raise ValueError(f"cannot tell the views of {n_frames} frames (no ViewCodeSequence per detector)")


def read_nm_views(path: str | os.PathLike) -> NMViews:
    """Read a whole-body NM file (single- or multi-frame, any transfer syntax pydicom's plugins decode).

    Raises:
        DicomInputError: the file is missing, not DICOM, not NM, has no pixel data or no pixel spacing,
            or its compressed pixel data cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomInputError(path, "file not found")
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for non-DICOM input
        raise DicomInputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    modality = str(ds.get("Modality", ""))
    if modality != "NM":
        raise DicomInputError(path, f"modality is {modality or 'missing'}, expected NM (nuclear medicine)")
    if "PixelData" not in ds:
        raise DicomInputError(path, "no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise DicomInputError(path, f"pixel data cannot be decoded (transfer syntax {syntax}: {e})") from e
    spacing_raw = ds.get("PixelSpacing")
    if not spacing_raw or len(spacing_raw) != 2 or min(float(v) for v in spacing_raw) <= 0:
        raise DicomInputError(path, "PixelSpacing missing or invalid; lesion sizes in mm need it")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = pixels.reshape(n_frames, int(ds.Rows), int(ds.Columns)).astype(np.float32)
    np.clip(frames, 0, None, out=frames)  # negative counts are vendor-processing noise
    try:
        views, source = identify_views(ds, n_frames)
    except ValueError as e:
        raise DicomInputError(path, str(e)) from e
    if source == "fallback":
        warnings.warn(f"{path}: no view code in the header; assuming {views} by frame order", stacklevel=2)
    del ds.PixelData
    return NMViews(frames, views, (float(spacing_raw[0]), float(spacing_raw[1])), source, ds)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def build_nm_dataset(
    frames: list[np.ndarray],
    views: list[str],
    spacing_mm: float,
    patient_id: str,
    patient_sex: str = "O",
    patient_age: int | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    signed: bool = False,
    seed_date: datetime.date | None = None,
) -> Dataset:
    """Build a whole-body NM Image IOD (one frame per view, frames share one energy window).

    Args:
        frames: integer count images, one per view, as stored (posterior already mirrored as acquired).
        views: "anterior" / "posterior" for each frame.
        spacing_mm: square pixel spacing.
        patient_id: PatientID and PatientName.
        patient_sex: "M", "F" or "O".
        patient_age: years, written as PatientAge.
        study_uid: StudyInstanceUID to share between files of one study; new when None.
        series_uid: SeriesInstanceUID; new when None.
        signed: store as signed 16-bit (PixelRepresentation 1), as some vendors do after processing.
        seed_date: StudyDate (deterministic output for a fixed seed).
    """
    date = (seed_date or datetime.date(2024, 1, 1)).strftime("%Y%m%d")
    stacked = np.stack(frames).astype(np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "090000"
    ds.AccessionNumber = ""
    ds.Modality = "NM"
    ds.Manufacturer = "MaligNet synthetic"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Whole Body Bone"
    ds.SeriesDescription = "Whole Body " + " ".join(v[:4].upper() for v in views)
    ds.ManufacturerModelName = "malignet_bundle.data.synthesize"
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    if patient_age is not None:
        ds.PatientAge = f"{int(patient_age):03d}Y"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "WHOLEBODY"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageID = "_".join(v[:4].upper() for v in views)
    ds.LossyImageCompression = "00"
    # NM/PET Patient Orientation: supine, feet first.
    ds.PatientOrientationCodeSequence = Sequence([_code("102538003", "SCT", "recumbent")])
    ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
        [_code("40199007", "SCT", "supine")])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("102541007", "SCT", "feet-first")])
    # Image pixel and NM image pixel.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stacked.shape[1]), int(stacked.shape[2])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelSpacing = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
    # Multi-frame and NM multi-frame: whole-body images index frames by energy window and detector.
    ds.NumberOfFrames = len(frames)
    ds.FrameIncrementPointer = [pydicom.tag.Tag("EnergyWindowVector"), pydicom.tag.Tag("DetectorVector")]
    ds.EnergyWindowVector = [1] * len(frames)
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = list(range(1, len(frames) + 1))
    ds.NumberOfDetectors = len(frames)
    # NM image.
    ds.CountsAccumulated = int(stacked.astype(np.int64).clip(0).sum())
    ds.AcquisitionTerminationCondition = "TIME"
    ds.ActualFrameDuration = 1200000
    ds.ScanVelocity = 12.0
    ds.ScanLength = int(round(stacked.shape[1] * spacing_mm))
    ds.WholeBodyTechnique = ["1PS"]  # one pass, both heads at once
    # NM isotope.
    window = Dataset()
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = "126"
    window_range.EnergyWindowUpperLimit = "154"
    window.EnergyWindowRangeSequence = Sequence([window_range])
    window.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = Sequence([window])
    radiopharmaceutical = Dataset()
    radiopharmaceutical.RadionuclideCodeSequence = Sequence([_code("44588005", "SCT", "^99m^Technetium")])
    radiopharmaceutical.Radiopharmaceutical = "Tc99m MDP"
    ds.RadiopharmaceuticalInformationSequence = Sequence([radiopharmaceutical])
    # NM detector: one item per view, each with its CID 26 view code.
    detectors = []
    for view in views:
        item = Dataset()
        item.CollimatorType = "PARA"
        item.CollimatorGridName = "LEHR"
        item.FieldOfViewShape = "RECTANGLE"
        item.ZoomFactor = ["1", "1"]
        item.ImagePositionPatient = ["0", "0", "0"]
        item.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"] if view == "anterior" else \
            ["-1", "0", "0", "0", "0", "-1"]
        item.ViewCodeSequence = Sequence([_code(*VIEW_CODES[view])])
        detectors.append(item)
    ds.DetectorInformationSequence = Sequence(detectors)
    ds.PixelData = stacked.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_compressed_copy(src: str | os.PathLike, dst: str | os.PathLike, syntax: str) -> None:
    """Write a losslessly compressed copy of ``src`` to ``dst`` (``syntax``: a key of ``COMPRESSED_SYNTAXES``).

    pydicom encodes RLE, JPEG-LS and JPEG 2000 itself; JPEG Lossless (process 14, SV1) has no pydicom
    encoder, so GDCM writes that one.
    """
    uid = COMPRESSED_SYNTAXES[syntax]
    if uid == JPEGLosslessSV1:
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise DicomInputError(src, "GDCM could not read the file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise DicomInputError(src, "GDCM could not encode JPEG Lossless")
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        with atomic_path(dst) as tmp:
            writer.SetFileName(str(tmp))
            if not writer.Write():
                raise DicomInputError(dst, "GDCM could not write the file")
        return
    ds = pydicom.dcmread(src)
    ds.compress(uid)
    save_dicom_atomic(ds, dst)
