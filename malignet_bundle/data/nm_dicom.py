"""Whole-body NM DICOM: write the synthetic studies, read vendor files view by view.

Reading goes through pydicom, whose pixel-data plugins (pylibjpeg, pyjpegls, gdcm) decode JPEG Lossless,
JPEG-LS, JPEG 2000 and RLE. Views are identified from the header, in this order:

1. ``DetectorVector`` → ``DetectorInformationSequence[i].ViewCodeSequence`` (code value or meaning);
2. per-frame text: ``DetectorInformationSequence[i]`` has no code → ``ImageID`` / ``SeriesDescription`` /
   ``ImageComments`` / ``ProtocolName`` containing ANT / POST words (single-view files);
3. fallback, with a warning: a two-frame file is taken as frame 1 anterior, frame 2 posterior (the order
   GE and Siemens whole-body acquisitions write); a one-frame file with no cue is anterior.

Two frames with the same view code, or a code that contradicts the frame order, are refused rather than
guessed.

Stored posterior frames are as acquired (patient's left on the image's left); mirroring to the anterior
orientation is a transform (:class:`malignet_bundle.transforms.SelectViewd`), so annotations drawn on the
stored pixels stay valid.

What is refused, and why (every refusal is a :class:`DicomInputError` naming the file and the reason):

- not NM, no pixel data, no valid ``PixelSpacing`` (lesion sizes in mm need it);
- more than one sample per pixel (RGB/YBR: a screenshot or secondary capture, not counts), a bit depth other
  than 8 or 16 bits allocated (the NM Image IOD allows only these);
- other than 1 or 2 frames: a whole-body file holds one view, or the anterior and posterior views;
- a frame smaller than ``MIN_ROWS`` × ``MIN_COLUMNS`` (256 × 64), larger than ``MAX_ROWS`` × ``MAX_COLUMNS``
  (4096 × 4096), or with fewer than twice as many rows as columns. Whole-body matrices are 1024 × 256 (GE,
  Siemens, the synthetic data) or 2048 × 512; 256 rows at the 2–2.5 mm pixels of a whole-body scan already
  cover only 60 cm, and a square frame is a spot view, which the chest crop and the network were not made for;
- native pixel data shorter than the header's Rows × Columns × frames × bytes (a truncated file, or a header
  that lies), or longer by a whole frame or more (a frame the header does not describe). This is checked on
  the element's length before any pixel is read, so a 1 MB file whose header claims 12000 × 12000 costs
  nothing; the size bounds above also cap what a compressed file's decoder may allocate;
- a constant frame (all zero, or one value everywhere): an empty or failed acquisition, on which the model
  would report "no lesion" as if it had seen the patient.

:func:`read_nm_header` does every check that needs no pixel (cheap enough for a whole datalist before
training); :func:`read_nm_views` adds the decoding and the constant-frame check.
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
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    NuclearMedicineImageStorage,
    RLELossless,
    generate_uid,
)

from malignet_bundle.atomic_io import atomic_path, save_dicom_atomic

__all__ = [
    "InputFileError",
    "DicomInputError",
    "NMViews",
    "NMHeader",
    "VIEW_CODES",
    "MIN_ROWS",
    "MIN_COLUMNS",
    "MAX_ROWS",
    "MAX_COLUMNS",
    "identify_views",
    "read_nm_header",
    "COMPRESSED_SYNTAXES",
    "read_nm_views",
    "build_nm_dataset",
    "write_compressed_copy",
]

logger = logging.getLogger(__name__)

# DICOM CID 26 "Nuclear Medicine Projection" (SNOMED CT).
VIEW_CODES = {
    "anterior": ("399321004", "SCT", "Anterior projection"),
    "posterior": ("399001007", "SCT", "Posterior projection"),
}
_VIEW_WORDS = {
    "anterior": re.compile(r"\bANT(ERIOR)?\b|\bANT[_\-]|_ANT\b", re.I),
    "posterior": re.compile(r"\bPOST(ERIOR)?\b|\bPOST[_\-]|_POST\b|\bPOS\b", re.I),
}

# Bounds of a whole-body view (see the module docstring for why).
MIN_ROWS, MIN_COLUMNS = 256, 64
MAX_ROWS, MAX_COLUMNS = 4096, 4096
MAX_FRAMES = 2
ALLOWED_BITS = (8, 16)

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
            if (
                str(code.get("CodeValue", "")) == value
                or meaning.split()[0].lower() in str(code.get("CodeMeaning", "")).lower()
            ):
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
    """Return the view of every frame and which rule found it (see the module docstring).

    Raises:
        ValueError: two frames carry the same view code, a view code contradicts the frame order the
            fallback would assume, or there are more than two frames without a code each.
    """
    detectors = ds.get("DetectorInformationSequence", []) or []
    raw_vector = ds.get("DetectorVector", None)
    if raw_vector is None:
        vector = []
    elif isinstance(raw_vector, (str, bytes)) or not hasattr(raw_vector, "__iter__"):
        vector = [int(raw_vector)]
    else:
        vector = [int(v) for v in raw_vector]
    if len(vector) != n_frames:
        # Without a usable DetectorVector, frame i belongs to detector item i only when there is one item per
        # frame; a single item shared by several frames says nothing about which frame is which view.
        vector = list(range(1, n_frames + 1)) if len(detectors) == n_frames else []
    views = [_view_from_code(detectors[i - 1]) if 0 < i <= len(detectors) else None for i in vector]
    views = views or [None] * n_frames
    coded = [(k, v) for k, v in enumerate(views) if v]
    for view in VIEW_CODES:
        frames = [k + 1 for k, v in coded if v == view]
        if len(frames) > 1:
            raise ValueError(
                f"frames {' and '.join(map(str, frames))} carry the same view code, {view} "
                "(DetectorInformationSequence ViewCodeSequence); each view must appear once in a file"
            )
    if coded and len(coded) == n_frames:
        return views, "view-code"
    if n_frames == 1:
        text_view = _view_from_text(ds)
        if text_view:
            return [text_view], "text"
        return ["anterior"], "fallback"
    if n_frames == 2:
        order = ["anterior", "posterior"]
        for k, view in coded:
            if view != order[k]:
                raise ValueError(
                    f"frame {k + 1} carries the {view} view code but the other frame has none, and frame order "
                    f"would make frame {k + 1} {order[k]}; cannot tell the views"
                )
        return order, "fallback"
    raise ValueError(f"cannot tell the views of {n_frames} frames (no ViewCodeSequence per detector)")


@dataclass
class NMHeader:
    """What the header of a whole-body NM file says, checked before any pixel is decoded.

    Attributes:
        dataset: the header; pixel data not read yet (deferred) or small enough to have been read.
        n_frames: frames in the file (one per view).
        rows, columns: size of one frame.
        views: view name per frame.
        view_source: "view-code", "text" or "fallback" (see :func:`identify_views`).
        spacing: (row, col) pixel spacing in mm.
    """

    dataset: Dataset
    n_frames: int
    rows: int
    columns: int
    views: list[str]
    view_source: str
    spacing: tuple[float, float]


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pixel_bytes(ds: Dataset, path: Path) -> int | None:
    """Bytes of native pixel data actually in the file (None for compressed, whose length says nothing).

    Reads no pixel value: a deferred element gives its length and file offset, so a truncated file shows as
    an element that ends past the end of the file.
    """
    if ds.file_meta.get("TransferSyntaxUID") is not None and ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    elem = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(elem, "length", None)
    if length is None or getattr(elem, "value", None) is not None:
        return len(ds.PixelData) if ds.PixelData is not None else 0
    if length == 0xFFFFFFFF:  # undefined length: encapsulated data under a native transfer syntax
        return None
    tell = getattr(elem, "value_tell", None)
    if tell is None:
        return length
    return max(0, min(length, path.stat().st_size - tell))


def _header_problems(ds: Dataset, path: Path) -> tuple[list[str], int, int, int]:
    """Every reason the header disqualifies the file, with the frame count and size it declares."""
    problems = []
    samples = _int_attr(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if samples != 1:
        problems.append(
            f"{samples} samples per pixel (PhotometricInterpretation {photometric or 'missing'}): a colour image "
            "such as a screenshot or secondary capture; a whole-body NM view is one grey channel of counts"
        )
    elif photometric.startswith(("RGB", "YBR")):
        problems.append(f"PhotometricInterpretation {photometric} is colour; NM counts are MONOCHROME2")
    bits, stored = _int_attr(ds, "BitsAllocated"), _int_attr(ds, "BitsStored")
    if bits not in ALLOWED_BITS:
        problems.append(f"BitsAllocated {bits}: NM images store {' or '.join(map(str, ALLOWED_BITS))} bits per pixel")
    elif stored is None or not 1 <= stored <= bits:
        problems.append(f"BitsStored {stored} is not between 1 and BitsAllocated {bits}")
    if _int_attr(ds, "PixelRepresentation", 0) not in (0, 1):
        problems.append(f"PixelRepresentation {ds.get('PixelRepresentation')} is neither 0 (unsigned) nor 1 (signed)")
    n_frames = _int_attr(ds, "NumberOfFrames", 1)
    if n_frames is None or not 1 <= n_frames <= MAX_FRAMES:
        problems.append(
            f"{ds.get('NumberOfFrames')} frames: a whole-body NM file holds one view or two (anterior and posterior)"
        )
    rows, columns = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if not rows or not columns:
        problems.append(f"Rows {ds.get('Rows')!r} / Columns {ds.get('Columns')!r} missing or zero")
    else:
        if rows < MIN_ROWS or columns < MIN_COLUMNS:
            problems.append(
                f"frame of {rows}x{columns} pixels (rows x columns) is too small for a whole-body view "
                f"(at least {MIN_ROWS}x{MIN_COLUMNS}; whole-body scans are 1024x256 or larger)"
            )
        elif rows > MAX_ROWS or columns > MAX_COLUMNS:
            problems.append(
                f"frame of {rows}x{columns} pixels is larger than any gamma camera matrix "
                f"(at most {MAX_ROWS}x{MAX_COLUMNS})"
            )
        elif rows < 2 * columns:
            problems.append(
                f"frame of {rows}x{columns} pixels is not a whole-body strip (head to feet along the rows, at "
                "least twice as many rows as columns, e.g. 1024x256); a square frame is a spot view"
            )
        available = _pixel_bytes(ds, path)
        if available is not None and bits in ALLOWED_BITS and samples and n_frames:
            frame_bytes = rows * columns * samples * bits // 8
            expected = frame_bytes * n_frames
            if available < expected or available - expected >= frame_bytes:
                problems.append(
                    f"pixel data holds {available} bytes but the header describes {n_frames} frame(s) of "
                    f"{rows}x{columns} x {samples} sample(s) x {bits // 8} byte(s) = {expected} bytes"
                    + (" (truncated file or lying header)" if available < expected else "")
                )
    spacing = ds.get("PixelSpacing")
    try:
        values = [float(v) for v in spacing] if spacing else []
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        problems.append(
            f"PixelSpacing missing or invalid ({'absent' if spacing is None else list(spacing)}); "
            "lesion sizes in mm need it"
        )
    return problems, n_frames or 1, rows or 0, columns or 0


def read_nm_header(path: str | os.PathLike) -> NMHeader:
    """Read and check the header of a whole-body NM file without decoding (or, if large, reading) its pixels.

    Cheap enough to run over a whole datalist before training: a header that lies about its size is caught
    here, before a decoder could allocate what the header claims.

    Raises:
        DicomInputError: the file is missing, not DICOM, not NM or has no pixel data; or any of: not one
            sample per pixel (colour), a bit depth other than 8/16, not 1 or 2 frames, a frame size no
            whole-body view has, pixel data shorter or longer than the header describes, no valid
            ``PixelSpacing``, views that cannot be told apart (all reasons in one message).
    """
    path = Path(path)
    if not path.is_file():
        raise DicomInputError(path, "file not found")
    try:
        # Deferred pixel data: the header's claims are checked against the element's length before a byte
        # of pixel data is read or decoded.
        ds = pydicom.dcmread(path, defer_size="64 KB")
        if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # a deferred element would be re-read at its offset in the inflated stream from the deflated
            # file; the whole dataset is inflated in memory anyway, so read it at once
            ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for non-DICOM input
        raise DicomInputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    modality = str(ds.get("Modality", ""))
    if modality != "NM":
        raise DicomInputError(path, f"modality is {modality or 'missing'}, expected NM (nuclear medicine)")
    if "PixelData" not in ds:
        raise DicomInputError(path, "no pixel data")
    problems, n_frames, rows, columns = _header_problems(ds, path)
    if problems:
        raise DicomInputError(path, "; ".join(problems))
    try:
        views, source = identify_views(ds, n_frames)
    except ValueError as e:
        raise DicomInputError(path, str(e)) from e
    spacing = tuple(float(v) for v in ds.PixelSpacing)
    return NMHeader(ds, n_frames, rows, columns, views, source, (spacing[0], spacing[1]))


def read_nm_views(path: str | os.PathLike) -> NMViews:
    """Read a whole-body NM file (single- or multi-frame, any transfer syntax pydicom's plugins decode).

    The header is checked first (:func:`read_nm_header`); then the pixels are decoded and every frame must
    hold counts (a constant frame is an empty or failed acquisition, on which "no lesion" would be a lie).

    Raises:
        DicomInputError: any reason of :func:`read_nm_header`, pixel data that cannot be decoded, or a
            constant frame.
    """
    path = Path(path)
    header = read_nm_header(path)
    ds = header.dataset
    try:
        pixels = ds.pixel_array
    except Exception as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise DicomInputError(path, f"pixel data cannot be decoded (transfer syntax {syntax}: {e})") from e
    shape = (header.n_frames, header.rows, header.columns)
    if pixels.size != int(np.prod(shape)):  # compressed data decoding to another size than its header says
        raise DicomInputError(path, f"pixel data decodes to shape {pixels.shape}, the header says {shape}")
    frames = pixels.reshape(shape).astype(np.float32)
    np.clip(frames, 0, None, out=frames)  # negative counts are vendor-processing noise
    constant = [
        f"frame {k + 1} ({view}) is constant (every pixel {float(frame.flat[0]):g}): no counts were recorded"
        for k, (view, frame) in enumerate(zip(header.views, frames, strict=True))
        if frame.min() == frame.max()
    ]
    if constant:
        raise DicomInputError(path, "; ".join(constant))
    if header.view_source == "fallback":
        warnings.warn(f"{path}: no view code in the header; assuming {header.views} by frame order", stacklevel=2)
    del ds.PixelData
    return NMViews(frames, header.views, header.spacing, header.view_source, ds)


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
        [_code("40199007", "SCT", "supine")]
    )
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
        item.ImageOrientationPatient = (
            ["1", "0", "0", "0", "0", "-1"] if view == "anterior" else ["-1", "0", "0", "0", "0", "-1"]
        )
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
