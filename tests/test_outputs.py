"""Output writers: the JSON lesion report and the DICOM SEG (highdicom) referencing the source NM frames."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pycocotools import mask as mask_utils
from pydicom.dataset import Dataset

from malignet_bundle.data.annotations import load_annotation
from malignet_bundle.data.class_map import ClassMap
from malignet_bundle.data.nm_dicom import read_nm_views
from malignet_bundle.data.synthesize import synthesize_study, write_study
from malignet_bundle.outputs.dicom_seg import (
    CLASS_CODES,
    GENERIC_LESION_CODE,
    SEGMENT_CATEGORY,
    build_dicom_segs,
    read_dicom_seg_masks,
    write_dicom_segs,
)
from malignet_bundle.outputs.prediction import StudyPrediction, ViewPrediction
from malignet_bundle.outputs.report import build_report, write_report

from .conftest import ROOT

# Synthetic studies (generator version 2) with lesions of several classes in both views (checked in _prediction).
MULTIFRAME_SEED, SINGLE_SEED = [3, 1], [10, 1]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _prediction(root, items, class_map, study_id) -> StudyPrediction:
    """The ground truth of a written synthetic study as a prediction, with made-up scores (not sorted)."""
    rng = np.random.default_rng(0)
    study = None
    for item in items:
        path = root / item["image"]
        nm = read_nm_views(path)
        index = nm.views.index(item["view"])
        frame = nm.frames[index]
        truth = load_annotation(root / item["label"], frame.shape, view=item["view"], image_file=item["image"])
        if study is None:
            study = StudyPrediction(study_id, [], [], nm.spacing)
        study.views.append(
            ViewPrediction(
                item["view"],
                index,
                frame,
                truth.masks,
                truth.labels(class_map),
                rng.uniform(0.3, 1.0, len(truth.masks)),
                truth.chest_box,
            )
        )
        study.source_paths.append(path)
        study.datasets.append(nm.dataset)
    for view in study.views:  # test preconditions: several classes, a malignant lesion, in every view
        assert len(set(view.labels.tolist())) >= 2 and 1 in view.labels, view.view
    return study


def _class_unions(view: ViewPrediction, num_classes: int) -> np.ndarray:
    out = np.zeros((*view.image.shape, num_classes), dtype=bool)
    for mask, label in zip(view.masks, view.labels, strict=True):
        out[..., label - 1] |= mask
    return out


def _dciodvfy_errors(path) -> list[str]:
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def multiframe_study(tmp_path_factory, class_map):
    root = tmp_path_factory.mktemp("multiframe")
    items = write_study(synthesize_study(MULTIFRAME_SEED, "MULTI"), root, class_map)
    return _prediction(root, items, class_map, "MULTI")


@pytest.fixture(scope="module")
def single_study(tmp_path_factory, class_map):
    root = tmp_path_factory.mktemp("single")
    items = write_study(synthesize_study(SINGLE_SEED, "SINGLE"), root, class_map, layout="single")
    return _prediction(root, items, class_map, "SINGLE")


def test_synthetic_posterior_annotations_are_in_stored_pixels(multiframe_study):
    """The masks sit on the hot spots of the stored posterior frame, not on their mirror images."""
    posterior = multiframe_study.views[1]
    assert posterior.view == "posterior" and posterior.frame_index == 1
    inside = np.mean([posterior.image[m].mean() for m in posterior.masks])
    mirrored = np.mean([posterior.image[m[:, ::-1]].mean() for m in posterior.masks])
    assert inside > 1.2 * mirrored


@pytest.mark.parametrize("layout", ["multiframe", "single"])
def test_seg_reads_back_onto_its_source_frame(layout, multiframe_study, single_study, class_map, tmp_path):
    study = multiframe_study if layout == "multiframe" else single_study
    hashes = {str(p): _sha(p) for p in study.source_paths}
    paths = write_dicom_segs(study, class_map, tmp_path / "out", algorithm_version="9.8.7")
    assert [p.name for p in paths] == ["seg_anterior.dcm", "seg_posterior.dcm"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert {str(p): _sha(p) for p in study.source_paths} == hashes  # sources only read
    series = set()
    for path, view, source in zip(paths, study.views, study.source_paths, strict=True):
        source_ds = pydicom.dcmread(source, stop_before_pixels=True)
        read = read_dicom_seg_masks(path)
        assert read.sop_instance_uid == source_ds.SOPInstanceUID
        assert read.frame_number == view.frame_index + 1
        expected = _class_unions(view, class_map.num_classes)
        assert read.masks.shape == expected.shape and read.masks.any()
        for label in range(1, class_map.num_classes + 1):
            assert np.array_equal(read.masks[..., label - 1], expected[..., label - 1]), (view.view, label)
        other = next(v for v in study.views if v is not view)
        assert not np.array_equal(read.masks, _class_unions(other, class_map.num_classes))  # views not swapped

        seg = pydicom.dcmread(path)
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        assert seg.StudyInstanceUID == source_ds.StudyInstanceUID and seg.PatientID == source_ds.PatientID
        # geometry is the reference to the source frame alone: no Frame of Reference, no pixel measures
        assert "FrameOfReferenceUID" not in seg and "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
        assert (seg.Rows, seg.Columns) == (source_ds.Rows, source_ds.Columns)
        (referenced,) = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == source_ds.SeriesInstanceUID
        assert [i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence] == [source_ds.SOPInstanceUID]
        (top,) = seg.SourceImageSequence
        assert (top.ReferencedSOPInstanceUID, int(top.ReferencedFrameNumber)) == (
            source_ds.SOPInstanceUID,
            view.frame_index + 1,
        )
        assert [s.SegmentLabel for s in seg.SegmentSequence] == class_map.names
        assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3, 4]
        for segment in seg.SegmentSequence:
            category = segment.SegmentedPropertyCategoryCodeSequence[0]
            kind = segment.SegmentedPropertyTypeCodeSequence[0]
            assert (category.CodeValue, category.CodingSchemeDesignator) == (SEGMENT_CATEGORY.value, "SCT")
            assert kind.CodeValue == CLASS_CODES[segment.SegmentLabel].value
            assert segment.SegmentAlgorithmType == "AUTOMATIC"
            algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
            assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MaligNet", "9.8.7")
        series.add(seg.SeriesInstanceUID)
        if shutil.which("dciodvfy"):
            assert not _dciodvfy_errors(path), _dciodvfy_errors(path)
    assert len(series) == 1  # one SEG series per study


def _as_source_class(source, target, kind: str, frame_of_reference: bool) -> None:
    """Copy a one-view synthetic NM file as another source class the reader accepts.

    ``kind`` "nm": the NM Image IOD, one frame. "sc": what GE stores processed whole-body scans as: Secondary
    Capture Image Storage with Modality NM, one frame, signed 16-bit, no NM multi-frame attributes.
    ``frame_of_reference``: add a FrameOfReferenceUID, as those vendor files carry.
    """
    ds = pydicom.dcmread(source)
    if kind == "sc":
        pixels = ds.pixel_array.astype(np.int16)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
        for keyword in (
            "NumberOfFrames",
            "FrameIncrementPointer",
            "EnergyWindowVector",
            "NumberOfEnergyWindows",
            "DetectorVector",
            "NumberOfDetectors",
        ):
            delattr(ds, keyword)
        ds.ConversionType = "WSD"
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.tobytes()
    if frame_of_reference:
        ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
        ds.PositionReferenceIndicator = ""
    ds.save_as(target, enforce_file_format=True)


@pytest.mark.parametrize(
    "kind, frame_of_reference",
    [("nm", True), ("nm-multiframe", True), ("sc", False), ("sc", True)],
    ids=["nm-for", "nm-multiframe-for", "sc", "sc-for"],
)
def test_seg_of_every_source_class_is_valid_and_reads_back_with_highdicom(
    kind, frame_of_reference, multiframe_study, single_study, class_map, tmp_path
):
    """NM (one and two frames) and Secondary Capture NM sources with a Frame of Reference, and without (above)."""
    import highdicom as hd

    origin = multiframe_study if kind == "nm-multiframe" else single_study
    view = origin.views[0]
    source = tmp_path / f"{kind}.dcm"
    _as_source_class(origin.source_paths[0], source, kind, frame_of_reference)
    nm = read_nm_views(source)
    assert nm.views[0] == view.view and np.array_equal(nm.frames[0], view.image)
    study = StudyPrediction("CLASS", [source], [nm.dataset], nm.spacing, [view])
    (path,) = write_dicom_segs(study, class_map, tmp_path / "out")

    seg = hd.seg.segread(path)  # highdicom's own reader, as any highdicom user would open it
    assert "FrameOfReferenceUID" not in seg
    (reference,) = seg.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == nm.dataset.SOPInstanceUID
    # a frame number only for a multi-frame IOD (NM, even with one frame); forbidden for Secondary Capture
    assert ("ReferencedFrameNumber" in reference) == kind.startswith("nm")
    read = read_dicom_seg_masks(path)
    assert (read.sop_instance_uid, read.frame_number) == (nm.dataset.SOPInstanceUID, 1)
    assert np.array_equal(read.masks, _class_unions(view, class_map.num_classes)) and read.masks.any()
    if shutil.which("dciodvfy"):
        assert not _dciodvfy_errors(path), _dciodvfy_errors(path)


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_check_can_fail(multiframe_study, class_map, tmp_path):
    """The dciodvfy assertion above is not vacuous: the same SEG without its SegmentSequence has errors."""
    path = write_dicom_segs(multiframe_study, class_map, tmp_path)[0]
    seg = pydicom.dcmread(path)
    del seg.SegmentSequence
    seg.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    assert not _dciodvfy_errors(path)
    assert _dciodvfy_errors(tmp_path / "broken.dcm")


def test_seg_of_other_class_map_and_empty_view(multiframe_study, tmp_path):
    """Classes without a known code get the generic lesion type; a view without lesions gives empty frames."""
    view = multiframe_study.views[0]
    relabelled = np.where(view.labels == 1, 2, 1)  # malignant → 2, the rest → 1
    class_map = ClassMap({1: "Hot spot", 2: "Malignant"})
    study = StudyPrediction(
        "OTHER",
        multiframe_study.source_paths,
        multiframe_study.datasets,
        multiframe_study.spacing,
        [
            ViewPrediction(view.view, 0, view.image, view.masks, relabelled, view.scores, view.chest_box),
            ViewPrediction(
                "posterior", 1, view.image, view.masks[:0], view.labels[:0], view.scores[:0], view.chest_box
            ),
        ],
    )
    segs = build_dicom_segs(study, class_map, series_number=42)
    assert [len(s.SegmentSequence) for s in segs] == [2, 2]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segs[0].SegmentSequence]
    assert types == [GENERIC_LESION_CODE.value, CLASS_CODES["malignant"].value]
    assert [s.SegmentLabel for s in segs[0].SegmentSequence] == ["Hot spot", "Malignant"]
    assert segs[0].SeriesNumber == 42 and segs[0].SeriesInstanceUID == segs[1].SeriesInstanceUID
    paths = write_dicom_segs(study, class_map, tmp_path)
    front, back = (read_dicom_seg_masks(p) for p in paths)
    assert np.array_equal(front.masks[..., 1], view.masks[view.labels == 1].any(0))
    assert np.array_equal(front.masks[..., 0], view.masks[view.labels != 1].any(0))
    assert back.frame_number == 2 and back.masks.shape == (*view.image.shape, 2) and not back.masks.any()


def test_seg_rejects_labels_outside_the_class_map(multiframe_study):
    view = multiframe_study.views[0]
    bad = ViewPrediction(view.view, 0, view.image, view.masks, view.labels + 10, view.scores, view.chest_box)
    study = StudyPrediction(
        "BAD", multiframe_study.source_paths[:1], multiframe_study.datasets[:1], (2.26, 2.26), [bad]
    )
    with pytest.raises(ValueError, match="outside the class map"):
        build_dicom_segs(study, ClassMap({1: "malignant", 2: "other"}))


# ------------------------------------------------------------------------------------------------ report


def _header(uid: str, frames: int = 2) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = uid, "1.2.840.10008.5.1.4.1.1.20"
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = "1.2.3.4", "1.2.3", "PAT-1"
    ds.NumberOfFrames = frames
    return ds


def _tiny_study(posterior_labels=(1,)) -> StudyPrediction:
    """6×8 frames at 2 mm rows × 3 mm columns; masks chosen to be checked by hand."""
    shape = (6, 8)
    a = np.zeros((2, *shape), dtype=bool)
    a[0, 1:3, 2:5] = True  # malignant: rows 1-2, cols 2-4 → 6 px, box [2, 1, 5, 3], centroid (x 3, y 1.5)
    a[1, 4, 7] = True  # degenerative, one pixel at row 4, col 7
    p = np.zeros((len(posterior_labels), *shape), dtype=bool)
    p[:, 0:2, 0:2] = True  # 4 px, box [0, 0, 2, 2], centroid (0.5, 0.5)
    ds = _header("1.2.3.4.5")
    return StudyPrediction(
        "TINY",
        ["/data/tiny.dcm", "/data/tiny.dcm"],
        [ds, ds],
        (2.0, 3.0),
        [
            ViewPrediction("anterior", 0, np.zeros(shape), a, np.array([1, 3]), np.array([0.4, 0.9]), (1, 0, 7, 5)),
            ViewPrediction(
                "posterior", 1, np.zeros(shape), p, np.array(posterior_labels), np.array([0.7]), (0.5, 0, 6.5, 5)
            ),
        ],
    )


def test_report_values_by_hand(class_map, tmp_path):
    study = _tiny_study()
    model = {"name": "MaligNet", "epochs": np.int64(3), "threshold": np.float32(0.5), "checkpoint": tmp_path}
    report = build_report(study, class_map, model=model)
    assert report["study_id"] == "TINY" and report["patient_id"] == "PAT-1" and report["study_instance_uid"] == "1.2.3"
    assert report["pixel_spacing_mm"] == [2.0, 3.0]
    assert report["model"] == {"name": "MaligNet", "epochs": 3, "threshold": 0.5, "checkpoint": str(tmp_path)}
    assert report["sources"] == [
        {
            "path": "/data/tiny.dcm",
            "sop_instance_uid": "1.2.3.4.5",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.20",
            "series_instance_uid": "1.2.3.4",
            "study_instance_uid": "1.2.3",
            "patient_id": "PAT-1",
            "number_of_frames": 2,
        }
    ]
    assert [(v["view"], v["frame_index"], v["chest_box"], v["lesion_count"]) for v in report["views"]] == [
        ("anterior", 0, [1.0, 0.0, 7.0, 5.0], 2),
        ("posterior", 1, [0.5, 0.0, 6.5, 5.0], 1),
    ]
    # by view, then descending score; ids follow the mask index, not the rank
    assert [les["id"] for les in report["lesions"]] == ["anterior-2", "anterior-1", "posterior-1"]
    lesions = {les["id"]: les for les in report["lesions"]}
    malignant = lesions["anterior-1"]
    assert (malignant["class_label"], malignant["class_name"], malignant["score"]) == (1, "malignant", 0.4)
    assert malignant["box"] == [2, 1, 5, 3]
    assert malignant["centroid_px"] == [3.0, 1.5]
    assert malignant["centroid_mm"] == [9.0, 3.0]  # x × column spacing 3 mm, y × row spacing 2 mm
    assert (malignant["area_px"], malignant["area_mm2"]) == (6, 36.0)
    dot = lesions["anterior-2"]
    assert (dot["class_name"], dot["box"], dot["centroid_mm"], dot["area_mm2"]) == (
        "degenerative_change",
        [7, 4, 8, 5],
        [21.0, 8.0],
        6.0,
    )
    assert lesions["posterior-1"]["box"] == [0, 0, 2, 2] and lesions["posterior-1"]["centroid_px"] == [0.5, 0.5]
    for lesion in report["lesions"]:
        view = study.views[0 if lesion["view"] == "anterior" else 1]
        index = int(lesion["id"].split("-")[1]) - 1
        assert np.array_equal(mask_utils.decode(lesion["mask"]).astype(bool), view.masks[index])
    assert report["metastasis"] == {"positive": True, "lesion_ids": ["anterior-1", "posterior-1"]}

    path = write_report(study, class_map, tmp_path / "nested" / "report.json", model=model)
    assert json.loads(path.read_text()) == report  # plain JSON types only: round-trips unchanged
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_report_without_malignant_lesions_and_without_masks(class_map):
    report = build_report(_tiny_study(posterior_labels=(4,)), class_map, malignant_label=2, mask_encoding=None)
    assert report["metastasis"] == {"positive": False, "lesion_ids": []}
    assert all("mask" not in les for les in report["lesions"])
    assert report["model"] is None
    json.dumps(report, allow_nan=False)
    trauma = build_report(_tiny_study(posterior_labels=(4,)), class_map, malignant_label=4)["metastasis"]
    assert trauma == {"positive": True, "lesion_ids": ["posterior-1"]}  # the verdict follows malignant_label
    with pytest.raises(ValueError, match="mask_encoding"):
        build_report(_tiny_study(), class_map, mask_encoding="png")
    with pytest.raises(KeyError):
        build_report(_tiny_study(), class_map, malignant_label=9)


def test_report_of_a_single_file_per_view_study(single_study, class_map):
    report = build_report(single_study, class_map)
    assert len(report["sources"]) == 2 and report["sources"][0]["path"] != report["sources"][1]["path"]
    assert [v["sop_instance_uid"] for v in report["views"]] == [ds.SOPInstanceUID for ds in single_study.datasets]
    assert {s["study_instance_uid"] for s in report["sources"]} == {report["study_instance_uid"]}
    row_mm, col_mm = single_study.spacing
    for view in single_study.views:
        listed = [les for les in report["lesions"] if les["view"] == view.view]
        assert len(listed) == len(view.masks)
        assert [les["score"] for les in listed] == sorted(view.scores.tolist(), reverse=True)
        for lesion in listed:
            mask = view.masks[int(lesion["id"].split("-")[1]) - 1]
            assert np.array_equal(mask_utils.decode(lesion["mask"]).astype(bool), mask)
            assert lesion["area_mm2"] == pytest.approx(mask.sum() * row_mm * col_mm)
    malignant = [les["id"] for les in report["lesions"] if les["class_name"] == "malignant"]
    assert report["metastasis"] == {"positive": True, "lesion_ids": malignant} and malignant


def test_inference_outputs_take_the_metastasis_class_from_the_class_map(single_study, tmp_path):
    """The verdict counts the class map's malignant class, here label 2 (``malignant_class`` in the metadata)."""
    from malignet_bundle.engines.inference import write_study_outputs

    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    meta["malignant_class"] = "infection_inflammation"
    class_map = ClassMap.from_meta(meta)
    assert class_map.malignant_label == 2
    written = write_study_outputs(single_study, class_map, tmp_path, dicom_seg=False)
    report = json.loads(written["report"].read_text())
    expected = [lesion["id"] for lesion in report["lesions"] if lesion["class_label"] == 2]
    assert report["metastasis"] == {"positive": bool(expected), "lesion_ids": expected}
    assert any(lesion["class_label"] == 1 for lesion in report["lesions"])  # label 1 lesions exist, not counted
    with pytest.raises(KeyError, match="unknown class name"):
        _ = ClassMap({1: "hot spot"}).malignant_label
